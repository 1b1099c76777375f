"""The committed generated code matches the proto (regenerated into a temp dir and compared)."""

from __future__ import annotations

from service.grpc import codegen


def test_committed_generated_code_is_current():
    stale = codegen.stale_files()
    assert stale == [], f"generated code is stale, run `python -m service.grpc.codegen`: {stale}"


def test_generation_writes_an_importable_package(tmp_path):
    written = {str(p) for p in codegen.generate(tmp_path)}
    assert {"medclm/__init__.py", "medclm/v1/__init__.py", "medclm/v1/medclm_pb2.py",
            "medclm/v1/medclm_pb2_grpc.py"} <= written


def test_stale_file_is_reported(tmp_path):
    codegen.generate(tmp_path)
    (tmp_path / "medclm" / "v1" / "medclm_pb2.py").write_text("# edited by hand\n")
    (tmp_path / "medclm" / "v1" / "leftover_pb2.py").write_text("")
    assert codegen.stale_files(tmp_path) == ["medclm/v1/leftover_pb2.py", "medclm/v1/medclm_pb2.py"]
