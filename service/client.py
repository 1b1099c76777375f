"""A small command-line client: ``python -m service.client ask IMAGE "QUESTION"`` prints the reasoning,
the answer and the boxes (original pixels); ``segment IMAGE`` prints the organs. gRPC by default
(``--grpc HOST:PORT``), or HTTP with ``--http URL``. For a DICOM image, ``--dicom-out DIR`` also writes the
DICOM SR (ask) and DICOM SEG (ask and segment) the service derives. It is also the shortest example of calling
the API."""

from __future__ import annotations

import argparse
import base64
import json
import sys
from pathlib import Path

MEDIA_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".dcm": "application/dicom"}


def media_type_of(path: Path, data: bytes) -> str:
    """From the file's first bytes (DICOM files often have no extension), else from its suffix."""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "image/png"
    if data[:2] == b"\xff\xd8":
        return "image/jpeg"
    if data[128:132] == b"DICM":
        return "application/dicom"
    return MEDIA_TYPES.get(path.suffix.lower(), "application/octet-stream")


def dicom_formats(args) -> list[str]:
    """The DICOM outputs to ask for: none without --dicom-out, else the SR and SEG (ask) or the SEG (segment)."""
    if not args.dicom_out:
        return []
    return ["dicom-sr", "dicom-seg"] if args.command == "ask" else ["dicom-seg"]


def save_dicom(folder: Path, outputs: list[tuple[str, str, bytes]]) -> None:
    """Write each (format, SOP instance UID, bytes) as FOLDER/<format>-<uid>.dcm and say where."""
    folder.mkdir(parents=True, exist_ok=True)
    for format_name, uid, data in outputs:
        path = folder / f"{format_name}-{uid}.dcm"
        path.write_bytes(data)
        print(f"wrote {format_name}: {path}")


def _http_json_and_dicom(response) -> tuple[dict, list[tuple[str, str, bytes]]]:
    """The JSON result and the DICOM parts of a /v1/ask or /v1/segment answer (JSON or multipart/related)."""
    if not response.headers.get("content-type", "").startswith("multipart/related"):
        return response.json(), []
    from service.pacs.multipart import read_multipart_related

    root, *parts = read_multipart_related(response.headers["content-type"], response.content)
    result = json.loads(root.data)
    outputs = [(meta["format"], meta["sop_instance_uid"], part.data)
               for meta, part in zip(result["dicom_outputs"], parts)]
    return result, outputs


def _ask_grpc(args, data: bytes, media_type: str) -> dict:
    import grpc

    from service.grpc.gen import medclm_pb2, medclm_pb2_grpc

    with grpc.insecure_channel(args.grpc) as channel:
        stub = medclm_pb2_grpc.MedCLMStub(channel)
        request = medclm_pb2.AskRequest(
            image=medclm_pb2.Image(data=data, media_type=media_type, modality=args.modality),
            question=args.question, precision=args.precision, brief=args.brief,
            output_formats=["json", *dicom_formats(args)])
        if args.max_tokens:
            request.max_tokens = args.max_tokens
        reply = stub.Ask(request, timeout=args.timeout)
    return {"answer": reply.answer, "steps": list(reply.reasoning_steps), "model": reply.model,
            "findings": [(f.label, f.organ, (f.box_px.x1, f.box_px.y1, f.box_px.x2, f.box_px.y2))
                         for f in reply.findings],
            "grounding": [(g.segmented_organ, g.overlap, g.consistent) for g in reply.grounding],
            "dicom": [(o.format, o.sop_instance_uid, o.data) for o in reply.dicom_outputs]}


def _ask_http(args, data: bytes, media_type: str) -> dict:
    import httpx

    body = {"image": {"data_base64": base64.b64encode(data).decode(), "media_type": media_type,
                      "modality": args.modality},
            "question": args.question, "precision": args.precision, "brief": args.brief,
            "output_formats": ["json", *dicom_formats(args)]}
    if args.max_tokens:
        body["max_tokens"] = args.max_tokens
    response = httpx.post(f"{args.http.rstrip('/')}/v1/ask", json=body, timeout=args.timeout)
    if response.status_code != 200:
        raise RuntimeError(f"HTTP {response.status_code}: {response.json().get('error')}")
    reply, dicom = _http_json_and_dicom(response)
    return {"answer": reply["answer"], "steps": reply["reasoning_steps"], "model": reply["model"],
            "findings": [(f["label"], f["organ"], tuple(f["box_px"][k] for k in ("x1", "y1", "x2", "y2")))
                         for f in reply["findings"]],
            "grounding": [(g["segmented_organ"], g["overlap"], g["consistent"]) for g in reply["grounding"]],
            "dicom": dicom}


def print_answer(result: dict) -> None:
    """Human-readable reasoning, answer and boxes."""
    print(f"model: {result['model']}")
    if result["steps"]:
        print("Reasoning:")
        for number, step in enumerate(result["steps"], start=1):
            print(f"  {number}. {step}")
    print(f"Answer: {result['answer']}")
    for index, (label, organ, box) in enumerate(result["findings"]):
        check = ""
        if index < len(result["grounding"]):
            segmented, overlap, consistent = result["grounding"][index]
            verdict = "consistent" if consistent else "MISMATCH"
            check = f" — segmenter: {segmented} ({overlap:.0%} of the box), {verdict}"
        print(f"  box {index + 1}: {label or 'finding'} in {organ or '?'} at x1={box[0]:.1f} y1={box[1]:.1f} "
              f"x2={box[2]:.1f} y2={box[3]:.1f} px{check}")


def _segment(args, data: bytes, media_type: str) -> tuple[list[tuple[str, int, float | None]], list]:
    """(organ name, pixels, mm² or None) per organ, and the DICOM outputs as (format, uid, bytes)."""
    if args.http:
        import httpx

        body = {"image": {"data_base64": base64.b64encode(data).decode(), "media_type": media_type,
                          "modality": args.modality}, "precision": args.precision, "mask_format": "rle",
                "output_formats": ["json", *dicom_formats(args)]}
        response = httpx.post(f"{args.http.rstrip('/')}/v1/segment", json=body, timeout=args.timeout)
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {response.json().get('error')}")
        reply, dicom = _http_json_and_dicom(response)
        return [(o["name"], o["pixel_count"], o.get("area_mm2")) for o in reply["organs"]], dicom
    import grpc

    from service.grpc.gen import medclm_pb2, medclm_pb2_grpc

    with grpc.insecure_channel(args.grpc) as channel:
        reply = medclm_pb2_grpc.MedCLMStub(channel).Segment(medclm_pb2.SegmentRequest(
            image=medclm_pb2.Image(data=data, media_type=media_type, modality=args.modality),
            precision=args.precision, mask_format=medclm_pb2.MASK_FORMAT_RLE,
            output_formats=["json", *dicom_formats(args)]), timeout=args.timeout)
    return ([(o.name, o.pixel_count, o.area_mm2 if o.HasField("area_mm2") else None) for o in reply.organs],
            [(o.format, o.sop_instance_uid, o.data) for o in reply.dicom_outputs])


def build_parser() -> argparse.ArgumentParser:
    """``ask`` and ``segment`` sub-commands with the transport options."""
    parser = argparse.ArgumentParser(prog="python -m service.client", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("ask", "segment"):
        command = sub.add_parser(name)
        command.add_argument("image", type=Path, help="PNG, JPEG or DICOM file")
        if name == "ask":
            command.add_argument("question")
            command.add_argument("--brief", action="store_true", help="answer only, no step-by-step reasoning")
            command.add_argument("--max-tokens", type=int, default=0)
        command.add_argument("--grpc", default="127.0.0.1:50051", help="gRPC address (default transport)")
        command.add_argument("--http", default="", help="HTTP base URL, e.g. http://127.0.0.1:8000 (uses HTTP)")
        command.add_argument("--precision", default="", help="fp32 | bf16 | int8 (VQA), fp32 | fp16 | int8 (segment)")
        command.add_argument("--modality", default="", help="ct or cxr for PNG/JPEG (DICOM says it itself)")
        command.add_argument("--timeout", type=float, default=120.0, help="seconds")
        command.add_argument("--dicom-out", type=Path, default=None,
                             help="DICOM input only: write the DICOM SR/SEG the service derives into this folder")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one call and print the result; errors go to stderr with exit code 1."""
    args = build_parser().parse_args(argv)
    if not args.image.is_file():
        print(f"error: {args.image} does not exist", file=sys.stderr)
        return 1
    data = args.image.read_bytes()
    media_type = media_type_of(args.image, data)
    try:
        if args.command == "ask":
            result = _ask_http(args, data, media_type) if args.http else _ask_grpc(args, data, media_type)
            print_answer(result)
            dicom = result["dicom"]
        else:
            organs, dicom = _segment(args, data, media_type)
            for name, pixels, area in organs:
                print(f"{name}: {pixels} px" + (f", {area:.0f} mm²" if area is not None else ""))
        if args.dicom_out:
            save_dicom(args.dicom_out, dicom)
    except Exception as exc:  # noqa: BLE001 - a CLI shows the server's message, not a traceback
        details = exc.details() if hasattr(exc, "details") else str(exc)
        print(f"error: {details}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
