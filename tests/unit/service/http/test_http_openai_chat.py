"""/v1/chat/completions with the real openai client and with raw requests."""

from __future__ import annotations

import base64

import openai
import pytest

from tests.unit.service.http.fake_core import STREAM_DELTAS, data_url, png_bytes


@pytest.fixture
def openai_client(server) -> openai.OpenAI:
    """The official client pointed at the test server (no retries, so errors surface once)."""
    with openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0, timeout=30.0) as client:
        yield client


def image_message(question: str = "Where is the lesion?", url: str | None = None) -> dict:
    return {"role": "user", "content": [{"type": "text", "text": question},
                                        {"type": "image_url", "image_url": {"url": url or data_url()}}]}


def test_openai_client_non_streaming(openai_client, fake_core):
    completion = openai_client.chat.completions.create(
        model="medclm", messages=[image_message()], max_completion_tokens=64, temperature=0.2, seed=11)

    assert completion.choices[0].message.content == "".join(STREAM_DELTAS)
    assert completion.choices[0].finish_reason == "stop"
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens, completion.usage.total_tokens) == (
        120, 30, 150)
    assert completion.model == "medclm" and completion.id.startswith("chatcmpl-")
    sent = fake_core.asks[0]
    assert (sent.question, sent.max_tokens, sent.temperature, sent.seed, sent.model) == (
        "Where is the lesion?", 64, 0.2, 11, "medclm")
    assert sent.image.data == png_bytes() and sent.image.media_type == "image/png"
    assert completion.model_extra["medclm"]["findings"][0]["box_norm"] == {"x1": 100, "y1": 200, "x2": 300, "y2": 400}


def test_openai_client_streaming(openai_client, fake_core):
    stream = openai_client.chat.completions.create(model="medclm", messages=[image_message()], max_tokens=32,
                                                   stream=True, stream_options={"include_usage": True})
    chunks = list(stream)

    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == "".join(STREAM_DELTAS)
    assert chunks[0].choices[0].delta.role == "assistant"
    finishing = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in finishing] == ["stop"]
    assert chunks[-1].usage.total_tokens == 150 and chunks[-1].choices == []
    assert fake_core.asks[0].max_tokens == 32


def test_raw_stream_ends_with_done(client):
    response = client.post("/v1/chat/completions", json={"messages": [image_message()], "stream": True})

    lines = [line for line in response.text.splitlines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    assert response.headers["content-type"].startswith("text/event-stream")


def test_dicom_data_url_is_accepted(client, fake_core):
    dicom = b"\0" * 128 + b"DICM" + b"\2" * 16
    response = client.post("/v1/chat/completions", json={"messages": [
        image_message(url=f"data:application/dicom;base64,{base64.b64encode(dicom).decode()}")]})

    assert response.status_code == 200, response.text
    assert fake_core.asks[0].image.media_type == "application/dicom" and fake_core.asks[0].image.data == dicom


def test_last_user_message_is_the_question(client, fake_core):
    messages = [image_message("first question"), {"role": "assistant", "content": "an answer"},
                {"role": "user", "content": "And its size?"}]

    response = client.post("/v1/chat/completions", json={"messages": messages})

    assert response.status_code == 200, response.text
    assert fake_core.asks[0].question == "And its size?"


@pytest.mark.parametrize("url", ["https://example.org/scan.png", "http://10.0.0.1/scan.png"])
def test_remote_image_urls_are_refused(openai_client, fake_core, url):
    with pytest.raises(openai.BadRequestError) as caught:
        openai_client.chat.completions.create(model="medclm", messages=[image_message(url=url)])

    error = caught.value.body["error"] if "error" in caught.value.body else caught.value.body
    assert error["code"] == "INVALID_ARGUMENT"
    assert error["field"] == "messages[0].content[1].image_url.url"
    assert "remote image URLs are not fetched" in error["message"]
    assert fake_core.asks == []


@pytest.mark.parametrize(("messages", "field", "words"), [
    ([{"role": "system", "content": "You are a radiologist."}, image_message()], "messages[0].role",
     "system messages are not supported"),
    ([{"role": "user", "content": [{"type": "text", "text": "q"},
                                   {"type": "image_url", "image_url": {"url": data_url()}},
                                   {"type": "image_url", "image_url": {"url": data_url()}}]}],
     "messages[0].content[2].image_url.url", "only one image"),
    ([{"role": "user", "content": "no image here"}], "messages", "needs one image"),
    ([image_message(), {"role": "assistant", "content": "x"}], "messages[1].role", "last message"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/gif;base64,R0lG"}}]}],
     "messages[0].content[0].image_url.url", "image/gif"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}]}],
     "messages[0].content[0].image_url.url", "not valid base64"),
])
def test_unsupported_conversations_are_400_with_a_clear_message(client, fake_core, messages, field, words):
    response = client.post("/v1/chat/completions", json={"model": "medclm", "messages": messages})

    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["code"], error["field"]) == ("INVALID_ARGUMENT", field)
    assert words in error["message"]
    assert fake_core.asks == []


def test_n_above_one_is_refused(client):
    response = client.post("/v1/chat/completions", json={"messages": [image_message()], "n": 2})

    assert response.status_code == 400 and response.json()["error"]["field"] == "n"


def test_streamed_chat_client_disconnect_closes_the_core_iterator(openai_client, fake_core):
    fake_core.hang = True
    stream = openai_client.chat.completions.create(model="medclm", messages=[image_message()], stream=True)
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            assert chunk.choices[0].delta.content == STREAM_DELTAS[0]
            break
    stream.close()

    assert fake_core.stream_closed.wait(timeout=20)
    assert not fake_core.stream_completed.is_set()


def test_models_list_through_the_openai_client(openai_client):
    models = openai_client.models.list()

    assert [m.id for m in models.data] == ["medclm", "organ_seg_ct"]
    assert models.data[0].model_extra["kind"] == "vqa" and models.data[1].model_extra["engine"] == "onnxruntime"
