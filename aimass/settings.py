"""Settings: the embedded default, a config file, and ``AIMASS_*`` environment overrides.

Precedence (highest first): explicit arguments > ``AIMASS_*`` environment variables >
``$AIMASS_HOME/config.yaml`` > the embedded default.

The embedded default needs nothing running: local Ray started on demand, MLflow on SQLite under
``$AIMASS_HOME`` (``~/.aimass`` unless set), and a local artifact directory.

Example:
    >>> s = Settings.load()
    >>> s.tracking_uri
    'sqlite:////home/me/.aimass/mlflow.db'
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

from aimass.exceptions import SpecError

__all__ = ["Settings", "aimass_home"]


def aimass_home() -> Path:
    return Path(os.environ.get("AIMASS_HOME", Path.home() / ".aimass")).expanduser().resolve()


_ENV = {
    "tracking_uri": "AIMASS_TRACKING_URI",
    "registry_uri": "AIMASS_REGISTRY_URI",
    "artifact_root": "AIMASS_ARTIFACT_ROOT",
    "mlflow_artifact_location": "AIMASS_MLFLOW_ARTIFACT_LOCATION",
    "ray_address": "AIMASS_RAY_ADDRESS",
    "experiment": "AIMASS_EXPERIMENT",
    "s3_endpoint_url": "AIMASS_S3_ENDPOINT_URL",
    "serve_http_port": "AIMASS_SERVE_PORT",
    "serve_token_file": "AIMASS_SERVE_TOKEN_FILE",
}


class Settings(BaseModel):
    """Where AI Mass keeps runs, models and artifacts."""

    model_config = ConfigDict(extra="forbid")

    home: Path = Field(description="Root of the embedded default ($AIMASS_HOME).")
    tracking_uri: str = Field(description="MLflow tracking URI (sqlite:///..., postgresql://..., http://...).")
    registry_uri: str | None = Field(default=None, description="MLflow registry URI; defaults to tracking_uri.")
    artifact_root: str = Field(description="Where pipeline outputs, caches and checkpoints go: a path or s3://bucket/prefix.")
    mlflow_artifact_location: str | None = Field(
        default=None, description="Artifact location for new MLflow experiments (file path or s3://); server default if unset."
    )
    ray_address: str | None = Field(default=None, description="Ray cluster address; local Ray is started when unset.")
    experiment: str = Field(default="aimass", description="MLflow experiment that holds pipeline runs.")
    s3_endpoint_url: str | None = Field(default=None, description="S3 endpoint (MinIO, moto, ...); AWS when unset.")
    serve_http_port: int = Field(default=8000, ge=1, le=65535, description="HTTP port of Ray Serve's proxy.")
    serve_token_file: str | None = Field(default=None, description="File holding the serving bearer token.")

    @classmethod
    def load(cls, **overrides: Any) -> "Settings":
        home = aimass_home()
        data: dict[str, Any] = {
            "home": home,
            "tracking_uri": f"sqlite:///{home / 'mlflow.db'}",
            "artifact_root": str(home / "artifacts"),
            "mlflow_artifact_location": str(home / "mlartifacts"),
        }
        cfg = home / "config.yaml"
        if cfg.exists():
            loaded = yaml.safe_load(cfg.read_text()) or {}
            if not isinstance(loaded, dict):
                raise SpecError("config file must be a mapping", got=type(loaded).__name__, location=str(cfg))
            data.update(loaded)
        for key, env in _ENV.items():
            if env in os.environ and os.environ[env] != "":
                data[key] = os.environ[env]
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**data)

    def is_embedded(self) -> bool:
        return self.tracking_uri.startswith("sqlite:") or self.tracking_uri.startswith("file:")

    def ensure_dirs(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        if "://" not in self.artifact_root:
            Path(self.artifact_root).mkdir(parents=True, exist_ok=True)
