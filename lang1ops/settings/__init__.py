"""The one configuration model of lang1-ops.

Every component reads its settings from here; values come from environment variables
(`LANG1OPS_...`, nested with `__`, e.g. `LANG1OPS_MODEL__MAX_NOTE_TOKENS=1024`) or a
`.env` file, so the same model configures the CLI, the Ray Serve deployments and the
Helm chart's generated config.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from lang1ops.settings.data import DataSettings
from lang1ops.settings.integration import IntegrationSettings
from lang1ops.settings.monitoring import MonitoringSettings
from lang1ops.settings.serving import ServingSettings
from lang1ops.settings.views import ViewsSettings


class ModelSettings(BaseModel):
    """Where models come from and how notes are fed to them."""

    base_model_dir: Path = Field(
        Path("var/models/smollm2-135m-instruct"),
        description="Local HF causal-LM directory used as the base model (never a hub id).",
    )
    max_note_tokens: int = Field(
        512, ge=16, description="Notes are right-truncated to this many tokens, as in the paper."
    )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="LANG1OPS_", env_nested_delimiter="__", env_file=".env", extra="ignore"
    )

    home: Path = Field(Path("var"), description="Root for data, registry and run outputs.")
    model: ModelSettings = Field(default_factory=ModelSettings)
    model_name: str = Field("lang1-ops", description="Registry name of the served model line.")
    registry_dir: Path = Field(Path("var/registry"), description="Model registry root (a shared volume on a cluster).")
    encoding_cache: Path = Field(Path("var/cache/encodings.sqlite"), description="Pooled note encodings by text hash.")
    serving: ServingSettings = Field(default_factory=ServingSettings)
    integration: IntegrationSettings = Field(default_factory=IntegrationSettings)
    monitoring: MonitoringSettings = Field(default_factory=MonitoringSettings)
    views: ViewsSettings = Field(default_factory=ViewsSettings)
    data: DataSettings = Field(default_factory=DataSettings)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
