"""Settings both roles must agree on: the model, the sampling of a lease, the CURVE keys.

They live in `protocol/` because the learner and the generators read them alike and must not
import each other; `launch.config` composes them into a run's configuration. The per-request
sampling settings are declared once, in `SamplingParams`: the config section extends it with
the group size, and a `Lease` carries it on the wire, validated by this same model on decode
(see `protocol.codec`), so a generator bounds what a learner may ask of it.

No torch here: `protocol/` is imported by every process, including the light ones.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

# Bounds of `SamplingParams.stop`: the list rides in every lease's (and every live-tuning
# reply's) header, which a peer refuses past 64 KiB; 32 x 256 characters stays far below.
MAX_STOP_STRINGS = 32
MAX_STOP_CHARS = 256


class StrictModel(BaseModel):
    """Unknown keys refused and assignments validated: a typo in a YAML file, an override or a
    live `asyncrl ctl set` fails with the field's name instead of being ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(StrictModel):
    path: str | None = Field(
        None,
        description="Hugging Face model directory (local path). Empty: build and use the "
        "embedded tiny model (see `tiny`).",
    )
    allow_hub_download: bool = Field(
        False,
        description="Accept a Hugging Face Hub id (org/name) as model.path, downloaded on "
        "first use (learner and hf generators). Off: model.path must be a local model "
        "directory, checked before anything loads.",
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32",
        description="Parameter/compute dtype of learner and hf generators. bfloat16 "
        "needs a GPU with bf16 support.",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Where learner and hf generators run; auto = cuda if available."
    )


class SamplingParams(StrictModel):
    """How to sample one request: what a lease asks a generator to do."""

    temperature: float = Field(
        1.0, gt=0.0, description="Sampling temperature; the learner scores with the same value."
    )
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus truncation; 1 = off.")
    top_k: int = Field(0, ge=0, description="Top-k truncation; 0 = off.")
    max_new_tokens: int = Field(1024, ge=1, description="Response length limit in tokens.")
    stop: list[Annotated[str, StringConstraints(min_length=1, max_length=MAX_STOP_CHARS)]] = Field(
        default_factory=list,
        max_length=MAX_STOP_STRINGS,
        description="Stop strings besides EOS: a sample ends (finish reason 'stop') with "
        "the token that completes one; that token is kept so logprobs stay aligned. At "
        f"most {MAX_STOP_STRINGS} strings of 1 to {MAX_STOP_CHARS} characters: every lease "
        "carries them in its header.",
    )


class SamplingConfig(SamplingParams):
    """The `sampling` section: the settings of every lease, and how many samples it asks for."""

    group_size: int = Field(8, ge=1, le=1024, description="Completions per prompt (G).")


class MetricsHttpSettings(StrictModel):
    """How a role's /metrics and /healthz server is reached, beyond host and port: the same
    fields in the learner and generator sections (each role serves its own)."""

    metrics_tls_certfile: str = Field(
        "", description="PEM certificate: serve /metrics and /healthz over HTTPS (with keyfile)."
    )
    metrics_tls_keyfile: str = Field("", description="PEM private key of metrics_tls_certfile.")
    metrics_auth_file: str = Field(
        "",
        description="File holding one line `user:password`: /metrics and /healthz then "
        "require HTTP basic auth (Prometheus: basic_auth in the scrape config). Empty: none.",
    )


class SecurityConfig(StrictModel):
    curve_dir: str | None = Field(
        None,
        description="CurveZMQ key directory from `asyncrl keys`; set = every socket is "
        "encrypted and only generators holding an allowed client key may lease, push rollouts "
        "or receive weights. Empty = no authentication (trusted networks only).",
    )
    client_name: str = Field(
        "client", description="Which client key pair (NAME.key_secret) a generator uses."
    )
