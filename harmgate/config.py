"""The run config: one YAML file, validated by pydantic.

Every section forbids unknown keys so that a typo (``lerning_rate``) fails loudly with the key's
path and the closest valid name, instead of being silently ignored and training with a default.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the file, the key path and a hint."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class ModelConfig(_Section):
    base: str = Field(description="Hub id (e.g. meta-llama/Llama-3.1-8B-Instruct) or local folder of the base model")
    revision: str | None = None
    torch_dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    trust_remote_code: bool = False


class QuantizationConfig(_Section):
    load_in_4bit: bool = True
    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = True
    compute_dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"


class LoraSettings(_Section):
    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"


class TrainingConfig(_Section):
    max_steps: int = Field(-1, description="-1: train for num_epochs")
    num_epochs: float = Field(1.0, gt=0)
    learning_rate: float = Field(2e-4, gt=0)
    per_device_batch_size: int = Field(4, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    max_seq_length: int = Field(1024, ge=16)
    warmup_steps: int = Field(0, ge=0)
    lr_scheduler: str = "cosine"
    weight_decay: float = 0.0
    gradient_checkpointing: bool = True
    logging_steps: int = Field(1, ge=1)
    save_steps: int = Field(200, ge=1)
    seed: int = 42

    @model_validator(mode="after")
    def _steps_or_epochs(self) -> "TrainingConfig":
        if self.max_steps == 0 or self.max_steps < -1:
            raise ValueError("max_steps must be -1 (use num_epochs) or a positive number of steps")
        return self


class DataSource(_Section):
    """One training source. ``id`` is a hub id; the data mirror maps it to a local file offline."""

    id: str
    format: Literal["hh", "instruction"]
    split: str = "train"
    data_dir: str | None = Field(None, description="Hub sub-folder, e.g. harmless-base for Anthropic/hh-rlhf")
    field: Literal["chosen", "rejected"] = Field("chosen", description="hh format: which transcript to train on")
    weight: float = Field(1.0, gt=0)
    limit: int | None = Field(None, ge=1, description="Rows read from this source before mixing")
    licence: str | None = None


class DataConfig(_Section):
    sources: list[DataSource] = Field(min_length=1)
    max_examples: int | None = Field(None, ge=1, description="Size of the mixture; None: every usable row")
    seed: int = 1234
    dedup: bool = True
    mirror: str | None = Field(None, description="Local data mirror; HARMGATE_DATA_MIRROR overrides")


class GenerationConfig(_Section):
    max_new_tokens: int = Field(96, ge=1)
    batch_size: int = Field(8, ge=1)
    temperature: float = Field(0.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)


class SuiteConfig(_Section):
    name: str = Field(description="A registered suite name, e.g. advbench_refusal")
    source: str | None = Field(None, description="Hub id or local path; default: the suite's own")
    limit: int | None = Field(None, ge=1)
    seed: int = 0


class EvalConfig(_Section):
    suites: list[SuiteConfig] = Field(min_length=1)
    generation: GenerationConfig = GenerationConfig()


class KPI(_Section):
    name: str
    metric: str = Field(description="<suite>.<metric>, e.g. advbench_refusal.compliance_rate")
    direction: Literal["lower", "higher"] = Field(description="Which way is better")
    max: float | None = Field(None, description="Absolute upper bound on the tuned value")
    min: float | None = Field(None, description="Absolute lower bound on the tuned value")
    max_ratio_to_base: float | None = Field(None, gt=0, description="tuned <= ratio * base")
    min_ratio_to_base: float | None = Field(None, gt=0, description="tuned >= ratio * base")
    max_increase_over_base: float | None = Field(None, ge=0, description="tuned <= base + delta")
    max_decrease_from_base: float | None = Field(None, ge=0, description="tuned >= base - delta")
    severity: Literal["block", "warn"] = "block"
    reason: str = ""

    @field_validator("metric")
    @classmethod
    def _dotted(cls, v: str) -> str:
        if v.count(".") != 1:
            raise ValueError(f"metric must look like '<suite>.<metric>', got {v!r}")
        return v

    @model_validator(mode="after")
    def _has_bound(self) -> "KPI":
        bounds = (self.max, self.min, self.max_ratio_to_base, self.min_ratio_to_base,
                  self.max_increase_over_base, self.max_decrease_from_base)
        if all(b is None for b in bounds):
            raise ValueError(f"KPI {self.name!r} has no bound: set max/min or a bound relative to the base")
        return self


class PolicyConfig(_Section):
    kpis: list[KPI] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> "PolicyConfig":
        names = [k.name for k in self.kpis]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate KPI names: {dupes}")
        return self


class StoreConfig(_Section):
    endpoint_url: str | None = Field(None, description="S3 endpoint; None: AWS S3")
    bucket: str = "harmgate-models"
    region: str = "us-east-1"
    prefix: str = "models"
    access_key_env: str = "HARMGATE_S3_ACCESS_KEY"
    secret_key_env: str = "HARMGATE_S3_SECRET_KEY"
    local_state_dir: str = Field(".harmgate/store", description="Where `harmgate store up` keeps its data and credentials")
    signing_key_env: str = "HARMGATE_SIGNING_KEY"
    max_attempts: int = Field(5, ge=1)


class ServiceConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    model_name: str | None = Field(None, description="Registry name to serve; default: the run config's name")
    version: str | None = Field(None, description="Pin a version (must be approved); default: newest approved")
    cache_dir: str = ".harmgate/cache"
    max_new_tokens: int = Field(256, ge=1)
    max_prompt_tokens: int = Field(2048, ge=1)


class RunConfig(_Section):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$", description="Model name in the registry")
    runs_dir: str = "runs"
    model: ModelConfig
    quantization: QuantizationConfig = QuantizationConfig()
    lora: LoraSettings = LoraSettings()
    training: TrainingConfig = TrainingConfig()
    data: DataConfig
    evals: EvalConfig
    policy: PolicyConfig
    store: StoreConfig = StoreConfig()
    service: ServiceConfig = ServiceConfig()


def _known_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names valid at ``loc`` (walking nested models and lists), for the did-you-mean hint."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return []
        ann = field.annotation
        for candidate in (ann, *getattr(ann, "__args__", ())):
            inner = getattr(candidate, "__args__", None)
            for c in (candidate, *(inner or ())):
                if isinstance(c, type) and issubclass(c, BaseModel):
                    current = c
                    break
            else:
                continue
            break
    return list(getattr(current, "model_fields", {}).keys())


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"invalid config {source}:"]
    for e in err.errors():
        loc = tuple(e["loc"])
        path = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in loc).replace(".[", "[")
        if e["type"] == "extra_forbidden":
            known = _known_keys(RunConfig, loc)
            close = difflib.get_close_matches(str(loc[-1]), known, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (valid keys: {', '.join(known)})"
            lines.append(f"  {path}: unknown key{hint}")
        else:
            lines.append(f"  {path or '<root>'}: {e['msg']}")
    return "\n".join(lines)


def parse_config(data: Any, source: str = "<dict>") -> RunConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"invalid config {source}: the top level must be a mapping, got {type(data).__name__}")
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, source)) from None


def load_config(path: str | Path) -> RunConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"invalid config {path}: not valid YAML: {err}") from None
    return parse_config(data, str(path))


def dump_config(config: RunConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
