"""Step previews through the fal routes: ``X-Flux2-Previews: N`` asks for them; each is stored
beside the outputs and announced in the job's logs; requests without the header get none."""

from __future__ import annotations

import io

import pytest
from PIL import Image
from service_helpers import SUBMIT_PATH, MakeService, edit_body, step_messages

from service.jobs import LogEntry
from service.previews import read_note


def notes(logs: list[dict[str, str]]) -> list[tuple[int, int, int, int, str]]:
    found = []
    for entry in logs:
        note = read_note(LogEntry(**entry))
        if note is not None:
            found.append((note.index, note.count, note.step, note.total, note.url))
    return found


def test_previews_are_stored_and_logged(make_service: MakeService) -> None:
    service = make_service(num_steps=8)
    headers = {"X-Flux2-Previews": "2"}
    request_id = service.submit(edit_body(output_format="jpeg"), headers=headers)
    service.wait_status(request_id)
    logs = service.logs(request_id)
    previews = notes(logs)
    assert [note[:4] for note in previews] == [(0, 2, 3, 8), (1, 2, 5, 8)]
    messages = [entry["message"] for entry in logs]
    # each preview comes right after its step, and all of them before the job completed
    for index, step in ((0, 3), (1, 5)):
        position = next(i for i, m in enumerate(messages) if m.startswith(f"preview {index + 1}/"))
        assert messages[position - 1] == f"step {step}/8"
    assert messages.index("Completed") > max(
        i for i, m in enumerate(messages) if m.startswith("preview")
    )
    for *_, url in previews:
        assert url.startswith(f"http://testserver/files/{request_id}/preview")
        answer = service.client.get(url)
        assert answer.status_code == 200
        assert answer.headers["content-type"] == "image/jpeg"
        image = Image.open(io.BytesIO(answer.content))
        assert image.size == (128, 128)  # a quarter of the 512x512 output
    assert len(step_messages(logs)) == 8


def test_no_previews_without_the_header(make_service: MakeService) -> None:
    service = make_service()
    request_id = service.submit()
    service.wait_status(request_id)
    assert notes(service.logs(request_id)) == []


@pytest.mark.parametrize("value", ["4", "-1", "two"])
def test_a_bad_previews_header_is_refused(make_service: MakeService, value: str) -> None:
    service = make_service()
    answer = service.client.post(SUBMIT_PATH, json=edit_body(), headers={"X-Flux2-Previews": value})
    assert answer.status_code == 422, answer.text
    assert answer.json()["detail"][0]["loc"] == ["header", "x-flux2-previews"]
