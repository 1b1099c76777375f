"""Helpers of the reliability tests: services without a VQA model, a MedCLM copy that never stops on its own,
the service's own metrics, its processes, and certificates made for the test."""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
from prometheus_client.parser import text_string_to_metric_families
from pydicom.data import get_testdata_file

from tests.support.medclm_repository import COMMITTED_REPOSITORY

POLL_S = 0.1  # between two looks at the service's own state (metrics, health), never a guess at timing


# --- inputs ------------------------------------------------------------------------------------------------
def ct_small() -> bytes:
    """pydicom's CT_small.dcm: a 128 x 128 CT slice with patient name, id and birth date in its header."""
    return Path(get_testdata_file("CT_small.dcm")).read_bytes()


def image_json(data: bytes, media_type: str, **extra) -> dict:
    """The JSON ``image`` object of the HTTP API."""
    return {"data_base64": base64.b64encode(data).decode(), "media_type": media_type, **extra}


# --- repositories ------------------------------------------------------------------------------------------
def segmenter_repository(folder: Path, missing_files: tuple[str, ...] = ()) -> Path:
    """The committed organ segmenters by symlink, without any VQA model. ``missing_files`` (e.g.
    ``organ_seg_cxr/1/model.onnx``) are left out: their folders are rebuilt of per-file links."""
    folder.mkdir(parents=True, exist_ok=True)
    for model in sorted(COMMITTED_REPOSITORY.glob("organ_seg_*")):
        if not any(m.startswith(model.name + "/") for m in missing_files):
            (folder / model.name).symlink_to(model)
            continue
        for source in model.rglob("*"):
            relative = source.relative_to(COMMITTED_REPOSITORY).as_posix()
            target = folder / relative
            if source.is_dir():
                target.mkdir(parents=True, exist_ok=True)
            elif relative not in missing_files:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.symlink_to(source)
    return folder


def never_stopping_repository(medclm_repository: Path, folder: Path) -> Path:
    """A copy of ``medclm`` whose end-of-sequence token is ``<pad>`` (which the model never emits), beside
    the committed segmenters: every generation runs to ``max_tokens``, so a test can stop one mid-way
    and tell an abort from a natural end."""
    segmenter_repository(folder)
    target = folder / "medclm"
    shutil.copytree(Path(medclm_repository) / "medclm", target, symlinks=False)
    checkpoint = target / "1" / "checkpoint"
    args = json.loads((target / "1" / "model.json").read_text())
    args["model"] = str(checkpoint)
    (target / "1" / "model.json").write_text(json.dumps(args, indent=2))
    tokenizer = json.loads((checkpoint / "tokenizer_config.json").read_text())
    pad = tokenizer.get("pad_token", "<pad>")
    tokenizer["eos_token"] = pad
    (checkpoint / "tokenizer_config.json").write_text(json.dumps(tokenizer, indent=2))
    config = json.loads((checkpoint / "config.json").read_text())
    pad_id = config.get("text_config", {}).get("pad_token_id", config.get("pad_token_id", 0))
    for section in (config, config.get("text_config", {})):
        if "eos_token_id" in section:
            section["eos_token_id"] = pad_id
    (checkpoint / "config.json").write_text(json.dumps(config, indent=2))
    generation = checkpoint / "generation_config.json"
    if generation.is_file():
        values = json.loads(generation.read_text())
        values["eos_token_id"] = pad_id
        generation.write_text(json.dumps(values, indent=2))
    return folder


def segment_only_args(repository: Path, *extra: str) -> list[str]:
    """Service flags for a service without a VQA model serving the fp32 segmenters of ``repository``."""
    return ["--model-repository", str(repository), "--vqa-variants", "", "--segmenter-variants", "fp32", *extra]


# --- the service's state -----------------------------------------------------------------------------------
def metric(text: str, name: str, **labels: str) -> float:
    """The value of sample ``name`` with ``labels`` in Prometheus text ``text`` (0 when absent)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def scrape(http_url: str, **client_options) -> str:
    """The service's /metrics text."""
    return httpx.get(f"{http_url}/metrics", timeout=10, **client_options).text


def wait_until(predicate, what: str, timeout_s: float = 60.0):
    """Poll ``predicate`` (a look at the service's state) until it returns something truthy."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(POLL_S)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def engine_core_processes(pid: int) -> list[psutil.Process]:
    """vLLM's engine-core child processes of the service process ``pid``."""
    found = []
    for child in psutil.Process(pid).children(recursive=True):
        try:
            if "EngineCore" in " ".join(child.cmdline()) or "EngineCore" in child.name():
                found.append(child)
        except psutil.NoSuchProcess:
            continue
    return found


# --- certificates --------------------------------------------------------------------------------------------
@dataclass
class Certificates:
    """PEM files of a test CA, a server certificate for 127.0.0.1/localhost and a client certificate."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_client_cert: Path  # signed by a CA the server does not trust
    other_client_key: Path


def _key():
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str):
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(subject: str, key, issuer: str, issuer_key, *, ca: bool, server: bool = False):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID

    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    elif not ca:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(folder: Path, name: str, certificate=None, key=None) -> Path:
    from cryptography.hazmat.primitives import serialization

    path = folder / name
    if certificate is not None:
        path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    else:
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return path


def make_certificates(folder: Path) -> Certificates:
    """A CA, a server and a client certificate signed by it, and a client certificate from another CA."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, other_ca_key = _key(), _key()
    ca = _certificate("medclm test CA", ca_key, "medclm test CA", ca_key, ca=True)
    server_key, client_key, other_key = _key(), _key(), _key()
    server = _certificate("localhost", server_key, "medclm test CA", ca_key, ca=False, server=True)
    client = _certificate("pacs-gateway", client_key, "medclm test CA", ca_key, ca=False)
    other = _certificate("intruder", other_key, "another CA", other_ca_key, ca=False)
    return Certificates(
        ca=_write(folder, "ca.pem", ca),
        server_cert=_write(folder, "server.pem", server), server_key=_write(folder, "server.key", key=server_key),
        client_cert=_write(folder, "client.pem", client), client_key=_write(folder, "client.key", key=client_key),
        other_client_cert=_write(folder, "other.pem", other),
        other_client_key=_write(folder, "other.key", key=other_key))
