"""Request and response models. Limits that depend on settings (MAX_N) are checked in the routes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator

ImageFormat = Literal["png", "json"]
MAX_SEED = 2**63 - 1  # in the schema as exclusiveMaximum 2**63: exact as a double, unlike 2**63 - 1


class StrictModel(BaseModel):
    # strict: "3" is not silently an int; forbid: a misspelt field is an error, not ignored.
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def integral_numbers_are_integers(cls, data: Any) -> Any:
        """``3.0`` is an integer in JSON (and in the JSON Schema the API publishes): accept it where an int is
        expected, as ``3``. ``2.5`` and ``"3"`` stay errors."""
        if not isinstance(data, dict):
            return data
        fixed = dict(data)
        for name, field in cls.model_fields.items():
            value = fixed.get(name)
            if (
                isinstance(value, float)
                and value.is_integer()
                and int in (field.annotation, *get_args(field.annotation))
            ):
                fixed[name] = int(value)
        return fixed


class GenerateRequest(StrictModel):
    n: int = Field(16, ge=1, description="number of images (at most FACEGEN_MAX_N)")
    seed: int | None = Field(
        None, ge=0, lt=MAX_SEED + 1, description="same seed, same images; omitted: random, reported"
    )
    format: ImageFormat = Field("png", description="png: one grid image; json: base64 PNGs")

    model_config = ConfigDict(json_schema_extra={"examples": [{"n": 16, "seed": 42, "format": "png"}]})


class ImagesResponse(BaseModel):
    model: str
    seed: int
    images: list[str] = Field(description="base64-encoded PNGs")


class Reconstruction(BaseModel):
    filename: str
    mse: float = Field(description="mean squared error per pixel on the [-1, 1] scale")
    original: str = Field(description="the preprocessed upload, base64 PNG")
    reconstruction: str = Field(description="base64 PNG")


class ReconstructResponse(BaseModel):
    model: str
    mean_mse: float
    images: Sequence[Reconstruction]  # (a Sequence: a subclass may narrow it to a list of a Reconstruction subclass)


class ModelCard(BaseModel):
    name: str
    family: str
    capabilities: list[str] = Field(description="what the family can do: sample, encode, score")
    precision: str = Field(description="compute precision of its forwards on this server")
    file: str
    sha256: str
    device: str
    parameters: int
    config: dict[str, Any]
    preprocess: dict[str, Any]
    attributes: list[str]
    metrics: dict[str, Any]
    training: dict[str, Any]
