"""A real Orthanc PACS with its DICOMweb plugin, for tests of the service's DICOMweb access.

Each instance gets a temporary storage folder, its own JSON configuration and free ports; ``start_orthanc``
returns once ``GET /system`` answers and ``stop`` terminates it (then kills it). Orthanc and the plugin come
from the Debian packages ``orthanc`` and ``orthanc-dicomweb``, which ``make install`` (scripts/setup_env.sh)
installs.

Orthanc 1.10 cannot bind 127.0.0.1:0 and report the port it got, and it always listens on every interface:
the ports are therefore picked free beforehand (with a retry if another process takes one first), remote
HTTP clients are refused (``RemoteAccessAllowed``) and remote DICOM peers may only C-ECHO.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.support.service_process import stop_process

INSTALL_HINT = "run `make install` (scripts/setup_env.sh installs the Debian packages orthanc and orthanc-dicomweb)"
# Where Debian's orthanc-dicomweb puts the plugin (a symlink to /usr/lib/orthanc/libOrthancDicomWeb.so.<version>).
DICOMWEB_PLUGIN_CANDIDATES = ("/usr/share/orthanc/plugins/libOrthancDicomWeb.so",
                              "/usr/lib/orthanc/libOrthancDicomWeb.so")
START_TIMEOUT_S = 20.0
START_ATTEMPTS = 3  # a free port can be taken by another process between picking it and Orthanc binding it
LOG_TAIL_LINES = 30


class OrthancNotInstalled(RuntimeError):
    """The Orthanc binary or its DICOMweb plugin is missing."""


@dataclass
class OrthancProcess:
    """A running Orthanc: its process, ports, folder and log file."""

    process: subprocess.Popen
    http_port: int
    dicom_port: int
    folder: Path

    @property
    def url(self) -> str:
        """Base URL of Orthanc's REST API."""
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        """Base URL of the DICOMweb API (what a DicomWebReference's base_url names)."""
        return f"{self.url}/dicom-web"

    @property
    def log_path(self) -> Path:
        """Orthanc's stdout and stderr."""
        return self.folder / "orthanc.log"

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last lines of Orthanc's log."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def upload(self, instance: bytes | Path) -> dict:
        """Store a DICOM Part-10 file through the REST API (``POST /instances``); Orthanc's answer (ID, Status)."""
        content = instance.read_bytes() if isinstance(instance, Path) else instance
        response = httpx.post(f"{self.url}/instances", content=content, timeout=30)
        response.raise_for_status()
        return response.json()

    def instances(self) -> list[dict]:
        """Every stored instance with its main DICOM tags (``GET /instances?expand``)."""
        response = httpx.get(f"{self.url}/instances", params={"expand": ""}, timeout=30)
        response.raise_for_status()
        return response.json()

    def sop_instance_uids(self) -> set[str]:
        """The SOPInstanceUIDs of every stored instance."""
        return {instance["MainDicomTags"]["SOPInstanceUID"] for instance in self.instances()}

    def stop(self, timeout: float = 10.0) -> int:
        """Terminate, wait, kill after ``timeout``; the exit code."""
        return stop_process(self.process, timeout)


def orthanc_binary() -> str:
    """Path of the ``Orthanc`` executable (Debian puts it in /usr/sbin, which a user's PATH may lack)."""
    found = shutil.which("Orthanc") or shutil.which("Orthanc", path="/usr/sbin:/usr/local/sbin")
    if not found:
        raise OrthancNotInstalled(f"the Orthanc binary is not installed: {INSTALL_HINT}")
    return found


def dicomweb_plugin() -> Path:
    """Path of the DICOMweb plugin library."""
    for candidate in DICOMWEB_PLUGIN_CANDIDATES:
        if Path(candidate).exists():
            return Path(candidate)
    raise OrthancNotInstalled(f"Orthanc's DICOMweb plugin is not installed (looked for "
                              f"{', '.join(DICOMWEB_PLUGIN_CANDIDATES)}): {INSTALL_HINT}")


def orthanc_configuration(folder: Path, http_port: int, dicom_port: int, plugin: Path) -> dict:
    """The test Orthanc's configuration: local-only, no authentication, DICOMweb on /dicom-web/."""
    return {
        "Name": "medclm-test",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "storage"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "RemoteAccessAllowed": False,  # Orthanc listens on every interface; only loopback clients get answers
        "AuthenticationEnabled": False,
        "DicomAlwaysAllowStore": False,  # no remote C-STORE into a test PACS (C-ECHO stays allowed)
        "HttpThreadsCount": 8,  # default 50: a test server needs few
        "SaveJobs": False,
        "WebDavEnabled": False,
        "Plugins": [str(plugin)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False},
    }


def start_orthanc(folder: Path, timeout: float = START_TIMEOUT_S) -> OrthancProcess:
    """Start Orthanc with its DICOMweb plugin in ``folder`` (created) on free ports; return once it answers.

    OrthancNotInstalled if the binary or plugin is missing; RuntimeError with the log tail if it does not
    come up within ``timeout``.
    """
    binary, plugin = orthanc_binary(), dicomweb_plugin()
    folder.mkdir(parents=True, exist_ok=True)
    failure = ""
    for attempt in range(START_ATTEMPTS):
        attempt_folder = folder / f"attempt-{attempt}"
        attempt_folder.mkdir()
        http_port, dicom_port = free_ports(2)
        config_path = attempt_folder / "orthanc.json"
        config_path.write_text(json.dumps(orthanc_configuration(attempt_folder, http_port, dicom_port, plugin),
                                          indent=2))
        with open(attempt_folder / "orthanc.log", "wb") as log:
            process = subprocess.Popen([binary, str(config_path)], cwd=attempt_folder, stdout=log,
                                       stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        orthanc = OrthancProcess(process, http_port, dicom_port, attempt_folder)
        if _wait_until_answering(orthanc, timeout):
            # Orthanc runs on without a plugin it cannot load (it only logs an error).
            if "dicom-web" in httpx.get(f"{orthanc.url}/plugins", timeout=5).json():
                return orthanc
            failure = orthanc.log_tail()  # before stopping: the shutdown lines would bury the reason
            orthanc.stop()
            raise RuntimeError(f"Orthanc started without its DICOMweb plugin ({plugin}); its log ends with:\n"
                               f"{failure}")
        failure = orthanc.log_tail()
        orthanc.stop()
        if "already in use" not in failure:  # "The TCP port of the HTTP server is privileged or already in use"
            break
    raise RuntimeError(f"Orthanc did not start (config {config_path}); its log ends with:\n{failure}")


def _wait_until_answering(orthanc: OrthancProcess, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if orthanc.process.poll() is not None:
            return False
        try:
            if httpx.get(f"{orthanc.url}/system", timeout=2).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.05)  # polling the health endpoint
    return False


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports free on every interface right now (Orthanc binds 0.0.0.0)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("0.0.0.0", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()
