"""Service settings: one pydantic-settings class, environment prefix ``MEDCLM_``, CLI flags on top.

Settings are built once in ``service.__main__`` (or by a test) and passed in explicitly; nothing reads the
environment at import time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    """Every setting of the service; ``python -m service --help`` lists them with these descriptions."""

    model_config = SettingsConfigDict(env_prefix="MEDCLM_", extra="forbid")

    # --- network ---
    host: str = Field("127.0.0.1", description="interface both servers bind (loopback by default)")
    http_port: int = Field(8000, ge=0, le=65535, description="HTTP port; 0 picks a free one")
    grpc_port: int = Field(50051, ge=0, le=65535, description="gRPC port; 0 picks a free one")
    # --- models ---
    model_repository: Path = Field(REPO_ROOT / "model_repository",
                                   description="Triton-layout folder holding medclm* and organ_seg_* models")
    vqa_model: str = Field("medclm", description="base name of the VQA model in the repository")
    vqa_variants: Annotated[list[str], NoDecode] = Field(
        ["fp32"], description="VQA precision variants to serve (fp32, bf16, int8)")
    segmenter_variants: Annotated[list[str], NoDecode] = Field(["fp32", "fp16", "int8"],
                                          description="segmenter precision variants to serve")
    # --- engines ---
    vqa_engine: Literal["vllm", "vllm-remote"] = Field(
        "vllm", description="vllm = in-process AsyncLLM; vllm-remote = an OpenAI-compatible vLLM server")
    vllm_remote_url: str = Field("", description="base URL of the remote vLLM server (vllm-remote), e.g. "
                                                 "http://10.0.0.5:8000")
    vllm_threads: int = Field(2, ge=1, description="CPU threads of the in-process vLLM engine (CPU builds)")
    vllm_max_model_len: int = Field(1024, ge=64, description="context length given to vLLM")
    segmentation_engine: Literal["onnxruntime", "triton"] = Field(
        "onnxruntime", description="onnxruntime = in-process; triton = a Triton server via tritonclient")
    triton_url: str = Field("", description="Triton address host:port (segmentation_engine=triton)")
    triton_protocol: Literal["grpc", "http"] = Field("grpc", description="tritonclient protocol")
    onnx_threads: int = Field(1, ge=1, description="intra-op threads per ONNX Runtime session")
    # --- segmenter dynamic batching (Triton-style) ---
    batching: bool = Field(True, description="queue segmentation requests into batches")
    max_batch_size: int = Field(8, ge=1, description="largest segmentation batch")
    max_queue_delay_ms: float = Field(2.0, ge=0, description="longest wait for a batch to fill")
    # --- admission control (beyond running + waiting: 429 / RESOURCE_EXHAUSTED before decoding) ---
    vqa_max_running: int = Field(16, ge=1, description="VQA requests inside vLLM at once, per variant")
    vqa_max_waiting: int = Field(64, ge=0, description="VQA requests waiting for a running slot, per variant")
    segment_max_running: int = Field(16, ge=1, description="segmentation requests inside the engine at once")
    segment_max_waiting: int = Field(64, ge=0, description="segmentation requests waiting for a running slot")
    # --- request limits ---
    max_request_bytes: int = Field(64 * 1024 * 1024, ge=1024, description="largest request body / message")
    max_image_pixels: int = Field(50_000_000, ge=1, description="largest decoded image (width x height x frames)")
    max_question_chars: int = Field(2000, ge=1, description="longest question")
    max_tokens_cap: int = Field(512, ge=1, description="largest max_tokens a request may ask for")
    default_max_tokens: int = Field(256, ge=1, description="max_tokens when a request gives none")
    # --- PACS (DICOMweb input by UIDs, STOW-RS of DICOM outputs) ---
    dicomweb_allowed_hosts: Annotated[list[str], NoDecode] = Field(
        ["127.0.0.1", "localhost", "::1"],
        description="hosts a request's DICOMweb base URL may name, comma-separated (the service fetches from them: "
                    "keep it to your PACS)")
    dicomweb_timeout_s: float = Field(30.0, gt=0, description="timeout of one DICOMweb retrieve or store")
    # --- lifecycle ---
    shutdown_grace_s: float = Field(30.0, ge=0, description="SIGTERM: how long in-flight requests may finish")
    recovery_max_backoff_s: float = Field(30.0, gt=0, description="longest wait between two attempts to reload "
                                                                  "an engine or model that is down")
    # --- authentication (off unless keys are given) ---
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        [], description="bearer API keys, comma-separated; KEY allows every route, KEY:scope+scope only those "
                        "scopes (ask, segment, models, health, metrics, docs, reflection); any key turns "
                        "authentication on")
    api_keys_file: Path | None = Field(None, description="file with one API key (KEY or KEY:scope+scope) per line, "
                                                         "# comments; combined with api_keys")
    open_routes: Annotated[list[str], NoDecode] = Field(
        ["health", "metrics"], description="scopes that need no key when authentication is on")
    # --- TLS (both transports; off unless a certificate is given) ---
    tls_cert_file: Path | None = Field(None, description="PEM server certificate (chain): HTTPS and gRPC over TLS")
    tls_key_file: Path | None = Field(None, description="PEM private key of tls_cert_file")
    tls_client_ca_file: Path | None = Field(None, description="PEM CA bundle: require client certificates signed "
                                                              "by it (mutual TLS) on both transports")
    # --- observability ---
    log_level: str = Field("INFO", description="log level of the JSON logs")
    log_request_text: bool = Field(False, description="log question text (off: may hold patient data)")
    log_hash_salt: SecretStr = Field(SecretStr(""), description="salt of hashed identifiers in logs (DICOM "
                                                                "StudyInstanceUID); empty = random per process")

    @field_validator("vqa_variants", "segmenter_variants", "api_keys", "open_routes", "dicomweb_allowed_hosts",
                     mode="before")
    @classmethod
    def _split_commas(cls, value):
        """Lists come from the environment and CLI as comma-separated text."""
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @model_validator(mode="after")
    def _tls_files_come_together(self):
        """A certificate needs its key (and the other way round); client CAs need a server certificate."""
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("tls_client_ca_file (mutual TLS) needs tls_cert_file and tls_key_file")
        return self

    @property
    def tls(self) -> bool:
        """Both transports serve TLS."""
        return self.tls_cert_file is not None
