"""Service settings: one pydantic-settings class, read from ``FACEGEN_*`` environment variables."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.services.device import check_device_name


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FACEGEN_", extra="ignore")

    weights_dir: Path = Field(Path("weights"), description="folder whose *.safetensors are loaded at startup")
    device: str = Field("auto", description="auto (cuda when available, else cpu), cpu, cuda, cuda:N")
    max_n: int = Field(64, ge=1, le=1024, description="largest number of images one request may ask for")
    max_upload_mb: float = Field(10.0, gt=0, le=512, description="cap on a whole request body, in MiB")
    max_image_pixels: int = Field(
        40_000_000, ge=64 * 64, description="largest upload (width x height, read from its header before decoding)"
    )
    max_request_pixels: int = Field(
        64_000_000,
        ge=64 * 64,
        description="decoded-pixel budget of one request, all its uploads together (JPEGs count at the reduced size "
        "they are decoded at)",
    )
    decode_side: int = Field(
        512,
        ge=64,
        le=8192,
        description="JPEGs are decoded at the smallest 1/2, 1/4 or 1/8 scale whose shorter side is still at least this",
    )
    decode_concurrency: int = Field(2, ge=1, le=64, description="uploads decoded at the same time, server-wide")
    required: Annotated[list[str], NoDecode] = Field(default_factory=list, description="families /ready waits for")
    require_all: bool = Field(
        True,
        description="/ready is 503 while any checkpoint in the weights folder failed to load (false: only "
        "FACEGEN_REQUIRED counts)",
    )
    verify_weights: bool = Field(
        True,
        description="check every checkpoint against the folder's SHA256SUMS and refuse a mismatch or an unlisted "
        "file (a folder without SHA256SUMS is served unverified, with a warning); false: load them anyway",
    )
    request_timeout_s: float = Field(
        60.0, gt=0, description="a request not answered within this (queue wait and inference) answers 503"
    )
    max_batch: int | None = Field(
        None,
        ge=1,
        le=4096,
        description="largest batch of images per forward; 1 = batching off (default: 64 on CPU, 256 on CUDA)",
    )
    batch_delay_ms: float = Field(
        5.0,
        ge=0,
        le=1000,
        description="while another forward is in flight, how long a batch may wait for more requests to join it, from "
        "its first one's arrival (an idle device starts a forward at once)",
    )
    max_queue: int = Field(1024, ge=1, description="images that may wait per model; beyond, 503 with Retry-After")
    precision: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="compute precision of the GAN/VAE/classifier forwards (Glow always runs float32)"
    )
    api_key: str | None = Field(None, min_length=8, description="when set, every route but /health needs X-API-Key")
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list, description="allowed browser origins")
    torch_threads: int | None = Field(None, ge=1, description="torch CPU threads (default: torch's choice)")
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        le=300,
        description="a connection that has not sent a request's complete headers within this "
        "gets 408 and is closed (python -m app)",
    )
    keep_alive_s: float = Field(
        5.0,
        gt=0,
        le=300,
        description="a connection idle this long (nothing sent since it opened or since its last answer) is closed "
        "(python -m app)",
    )
    body_timeout_s: float = Field(
        30.0, gt=0, le=600, description="a request body that stalls this long between two reads gets 408"
    )
    body_deadline_s: float = Field(
        120.0,
        gt=0,
        le=3600,
        description="a request body not complete this long after its headers arrived gets 408, however steadily it "
        "trickles in",
    )
    max_connections: int = Field(
        512,
        ge=1,
        description="open connections and requests in progress beyond which requests get 503 with Retry-After, "
        "GET /health excepted (python -m app)",
    )

    @field_validator("required", "cors_origins", mode="before")
    @classmethod
    def comma_separated(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("device")
    @classmethod
    def known_device(cls, value: str) -> str:
        return check_device_name(value)

    def batch_size_for(self, device_type: str) -> int:
        if self.max_batch is not None:
            return self.max_batch
        return 256 if device_type == "cuda" else 64

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


@lru_cache
def get_settings() -> Settings:
    return Settings()
