"""A merged model folder written as a GGUF file, the format llama.cpp, Ollama and LM Studio run, with the chat
template and special tokens inside, and an Ollama Modelfile beside it.

No maintained converter installs from PyPI without building llama.cpp (its convert_hf_to_gguf.py is a script in
that repository), so this glue is written here on gguf-py's own parts: GGUFWriter (the file), TensorNameMap (the
Hugging Face -> GGUF tensor names), SpecialVocab (merges, special token ids, chat template) and its Q8_0
quantizer. Written by hand: the architecture metadata, the byte-level BPE token list, and the reordering of the
query and key rows that llama.cpp's rotary embedding expects for Llama models (transformers undoes it on loading).
Supported: Llama-family models (SmolLM, Llama 3, Mistral) and Qwen2, with byte-level BPE tokenizers."""
from __future__ import annotations

import json
import re
from pathlib import Path

from core.errors import InputError

FILE_TYPES = {"f16": 1, "q8_0": 7}  # llama.cpp's general.file_type numbers
ARCHITECTURES = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2"}
# llama.cpp picks its pre-tokenizer (how text is split before BPE) by name; these are the ones it knows for the
# tokenizers written here, told apart by model type and vocabulary size. Others get llama.cpp's default.
PRE_TOKENIZERS = {("llama", 49152): "smollm", ("llama", 128256): "llama-bpe", ("qwen2", None): "qwen2"}


def check_exportable(config) -> str:
    """The GGUF architecture name for a model config, or a clear refusal."""
    names = getattr(config, "architectures", None) or []
    arch = next((ARCHITECTURES[n] for n in names if n in ARCHITECTURES), None)
    if arch is None:
        raise InputError(f"GGUF export supports {', '.join(sorted(ARCHITECTURES))}; this model is "
                         f"{', '.join(names) or config.model_type}. llama.cpp's convert_hf_to_gguf.py converts more")
    return arch


def write_gguf(model_dir: Path, target: Path, kind: str, name: str) -> Path:
    """Write the model folder `model_dir` (safetensors weights, config, tokenizer) as one GGUF file of `kind`
    ("f16" or "q8_0") at `target`, written to a side file first and renamed when whole."""
    import gguf
    import numpy as np
    from safetensors import safe_open
    from transformers import AutoConfig

    if kind not in FILE_TYPES:
        raise InputError(f"GGUF type must be one of {', '.join(FILE_TYPES)}", subject=kind)
    config = AutoConfig.from_pretrained(model_dir)
    arch = check_exportable(config)
    tokenizer_file = json.loads((model_dir / "tokenizer.json").read_text())
    if tokenizer_file.get("model", {}).get("type") != "BPE" or not _byte_level(tokenizer_file):
        raise InputError("GGUF export writes byte-level BPE tokenizers (SmolLM, Llama 3, Qwen2); this model's is "
                         "not one. llama.cpp's convert_hf_to_gguf.py converts more")
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    part = target.with_name(target.name + ".part")
    writer = gguf.GGUFWriter(str(part), arch)
    writer.add_name(name)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_file_type(FILE_TYPES[kind])
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_freq_base(float(getattr(config, "rope_theta", None)
                                    or (getattr(config, "rope_parameters", None) or {}).get("rope_theta", 10000.0)))
    writer.add_rope_dimension_count(head_dim)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    _add_tokenizer(writer, model_dir, tokenizer_file, config, arch)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA if arch == "llama" else gguf.MODEL_ARCH.QWEN2,
                                     config.num_hidden_layers)
    files = sorted(model_dir.glob("*.safetensors"))
    for file in files:
        with safe_open(str(file), framework="pt") as weights:
            for hf_name in weights.keys():
                if hf_name.endswith("rotary_emb.inv_freq"):
                    continue
                if hf_name == "lm_head.weight" and getattr(config, "tie_word_embeddings", False):
                    continue  # the embeddings serve as the output layer
                gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
                if gguf_name is None:
                    raise InputError(f"no GGUF name for the tensor {hf_name}", subject=str(model_dir))
                data = weights.get_tensor(hf_name).float().numpy()
                if arch == "llama" and hf_name.endswith("q_proj.weight"):
                    data = _rotary_rows(data, heads)
                elif arch == "llama" and hf_name.endswith("k_proj.weight"):
                    data = _rotary_rows(data, kv_heads)
                _add_tensor(writer, gguf, np, gguf_name, data, kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    part.replace(target)
    return target


def _add_tensor(writer, gguf, np, name: str, data, kind: str) -> None:
    """Norms and biases (1-D) stay float32, as llama.cpp keeps them; matrices become f16, or Q8_0 where each row
    splits into its 32-value blocks."""
    if data.ndim == 1:
        writer.add_tensor(name, data.astype(np.float32))
    elif kind == "q8_0" and data.shape[-1] % 32 == 0:
        writer.add_tensor(name, gguf.quantize(data, gguf.GGMLQuantizationType.Q8_0),
                          raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    else:
        writer.add_tensor(name, data.astype(np.float16))


def _rotary_rows(weights, heads: int):
    """Hugging Face's Llama keeps each head's rotary halves apart; llama.cpp wants them interleaved."""
    rows = weights.shape[0]
    return (weights.reshape(heads, 2, rows // heads // 2, *weights.shape[1:]).swapaxes(1, 2)
            .reshape(weights.shape))


def _byte_level(tokenizer_file: dict) -> bool:
    return "ByteLevel" in json.dumps(tokenizer_file.get("pre_tokenizer")) + json.dumps(tokenizer_file.get("decoder"))


def _add_tokenizer(writer, model_dir: Path, tokenizer_file: dict, config, arch: str) -> None:
    import gguf

    vocab = tokenizer_file["model"]["vocab"]
    added = {t["id"]: t for t in tokenizer_file.get("added_tokens", [])}
    size = config.vocab_size
    by_id = {i: token for token, i in vocab.items()}
    by_id.update({i: t["content"] for i, t in added.items()})
    tokens, types = [], []
    for i in range(size):  # a vocabulary padded past the tokenizer's last id gets placeholder tokens, as llama.cpp's
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        tokens.append(by_id[i])
        types.append(gguf.TokenType.CONTROL if added.get(i, {}).get("special") else
                     gguf.TokenType.USER_DEFINED if i in added else gguf.TokenType.NORMAL)
    from transformers import AutoTokenizer

    writer.add_tokenizer_model("gpt2")
    pre = PRE_TOKENIZERS.get((arch, size)) or PRE_TOKENIZERS.get((arch, None)) or "default"
    writer.add_tokenizer_pre(pre)
    # Whether a prompt starts with the BOS token, as the tokenizer itself does it (llama.cpp's default for a Llama
    # model without this field is to add one).
    hf_tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    starts = hf_tokenizer("x")["input_ids"][:1]
    writer.add_add_bos_token(hf_tokenizer.bos_token_id is not None and starts == [hf_tokenizer.bos_token_id])
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(str(model_dir), load_merges=True, n_vocab=size)
    special.add_special_token.pop("bos", None)  # written above, from what the tokenizer does
    special.add_to_gguf(writer)  # merges, bos/eos/pad/unk ids, the chat template


def ollama_modelfile(gguf_name: str, tokenizer, chat_template: str | None) -> str:
    """An Ollama Modelfile for the file: its template written out where it is ChatML (Ollama would otherwise guess
    from the GGUF's Jinja template), the default system prompt, and the end-of-turn token as a stop."""
    lines = [f"FROM ./{gguf_name}"]
    template = chat_template or ""
    if "<|im_start|>" in template:
        lines.append('TEMPLATE """{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}'
                     '{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}'
                     '<|im_start|>assistant\n"""')
        default_system = re.search(r"<\|im_start\|>system(?:\\n|\n)(.*?)<\|im_end\|>", template)
        if default_system:
            lines.append(f'SYSTEM """{default_system.group(1)}"""')
        lines.append('PARAMETER stop "<|im_end|>"')
    elif tokenizer.eos_token:
        lines.append(f'PARAMETER stop "{tokenizer.eos_token}"')
    return "\n".join(lines) + "\n"
