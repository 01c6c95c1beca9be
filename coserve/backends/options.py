"""What each backend accepts under an expert's ``options``: one pydantic schema per backend.

coserve.backends.registry pairs each schema with its backend and checks a library's experts
against it before an engine is built: a typo (``n_paralel``), a value of the wrong kind (``threads:
two``) or one out of range (``kv_cache_type: q4``) is a ConfigError at startup that names the
expert and the key, instead of an expert that fails on its first request. The backends read the
checked dict (with their own defaults for keys left out); this module imports no runtime.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

__all__ = [
    "DTYPE_BYTES",
    "BackendOptions",
    "FakeOptions",
    "LlamaCppOptions",
    "LlamaCppSplitOptions",
    "OpenAIOptions",
    "TransformersOptions",
    "VllmOptions",
    "check_options",
]

DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}  # torch dtypes the GPU backends size


class BackendOptions(BaseModel):
    """Read by the engine for every backend."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    # Keys this backend refuses for a reason worth more than "not an option": key -> the reason.
    refused: ClassVar[dict[str, str]] = {}

    n_parallel: int | None = Field(None, ge=1, le=256)  # requests served together (slots)
    max_tokens: int | None = Field(None, ge=1)  # the cap when a request names none
    timeout_s: float | None = Field(None, gt=0)  # seconds without a chunk before the expert counts as hung

    @classmethod
    def check_context(cls, options: dict[str, Any], context: int) -> None:
        """What the checked options must satisfy against the expert's ``context``; ValueError if not."""

    @classmethod
    def on_host_cores(cls, options: dict[str, Any]) -> bool:
        """Whether an expert with these options decodes on this machine's CPU cores."""
        return False


class _LlamaCppCommon(BackendOptions):
    threads: int | None = Field(None, ge=1, le=1024)


class LlamaCppOptions(_LlamaCppCommon):
    prompt_cache_mib: int | None = Field(None, ge=0)
    n_gpu_layers: int | None = Field(None, ge=-1)  # -1: all; needs a runtime built with CUDA

    @classmethod
    def on_host_cores(cls, options: dict[str, Any]) -> bool:
        # Not with every layer on a GPU (-1); a partial offload still decodes the rest here.
        return int(options.get("n_gpu_layers", 0)) != -1


class LlamaCppSplitOptions(_LlamaCppCommon):
    refused: ClassVar[dict[str, str]] = {
        "n_gpu_layers": "llama.cpp would put offloaded layers on the GPU when the model loads, which is "
        "this backend's RAM tier; use backend llamacpp, which offloads at the RAM -> ACTIVE move",
    }

    kv_cache_type: Literal["f16", "q8_0"] | None = None
    kv_cache_tokens: int | None = Field(None, ge=128)  # cells of the shared KV cache (>= context)

    @classmethod
    def check_context(cls, options: dict[str, Any], context: int) -> None:
        cells = options.get("kv_cache_tokens")
        if cells is not None and cells < context:
            raise ValueError(
                f"options.kv_cache_tokens ({cells}) must hold at least one request of the expert's context ({context})"
            )

    @classmethod
    def on_host_cores(cls, options: dict[str, Any]) -> bool:
        return True


class OpenAIOptions(BackendOptions):
    base_url: str = Field(pattern=r"^https?://\S+$")
    model: str | None = Field(None, min_length=1)  # the name the endpoint knows the model by
    api_key_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    connect_timeout: float | None = Field(None, gt=0)
    read_timeout: float | None = Field(None, gt=0)


class VllmOptions(BackendOptions):
    sleep_mode: Literal["auto", "on", "off"] | None = None
    dtype: Literal["bfloat16", "float16", "float32"] | None = None
    kv_cache_mib: int | None = Field(None, ge=1)
    enforce_eager: bool | None = None
    gpu_memory_utilization: float | None = Field(None, gt=0, le=1)


class TransformersOptions(BackendOptions):
    device: str | None = Field(None, pattern=r"^(cpu|cuda(:[0-9]+)?|mps)$")
    dtype: Literal["bfloat16", "float16", "float32"] | None = None

    @classmethod
    def on_host_cores(cls, options: dict[str, Any]) -> bool:
        return options.get("device", "cpu") == "cpu"  # unset: a GPU only if PyTorch sees one


class FakeOptions(BackendOptions):
    """The test double's knobs (coserve.backends.fake)."""

    nbytes: int | None = Field(None, ge=0)
    footprint: int | None = Field(None, ge=0)
    load_delay: float | None = Field(None, ge=0)
    token_delay: float | None = Field(None, ge=0)
    fail_measure: bool | None = None
    fail_stage: bool | None = None
    fail_load: bool | None = None
    fail_load_oom: bool | None = None
    fail_generate: bool | None = None
    fail_after_tokens: int | None = Field(None, ge=0)
    logprobs: bool | None = None  # false: a runtime that cannot give log-probabilities
    counts: bool | None = None  # false: no prompt counter (prompts checked only once loaded)
    tokens_per_word: int | None = Field(None, ge=1)  # the prompt's tokens per word (another tokenizer)


def check_options(schema: type[BackendOptions], backend: str, options: Any) -> dict[str, Any]:
    """The options as checked values (only the keys given); ValueError naming every bad key."""
    try:
        checked = schema.model_validate(options if options is not None else {})
    except ValidationError as exc:
        known = ", ".join(sorted(schema.model_fields))
        problems = []
        for err in exc.errors():
            key = ".".join(str(part) for part in err["loc"])
            where = f"options.{key}" if key else "options"
            if key in schema.refused:
                problems.append(f"{where}: {schema.refused[key]}")
            elif err["type"] == "extra_forbidden":
                problems.append(f"{where}: not an option of the {backend} backend (known: {known})")
            else:
                problems.append(f"{where}: {err['msg']}")
        raise ValueError("; ".join(problems)) from None
    return checked.model_dump(exclude_unset=True, exclude_none=True)  # null: the default
