"""The stand-ins' shared HTTP core: routing, control API and every fault kind."""

from __future__ import annotations

import pytest
import requests

from sandbox.faults import Faults
from sandbox.http import App, Request, Response, Server, json_response


class Echo(App):
    name = "echo"

    def __init__(self) -> None:
        super().__init__(seed=7)
        self.created: list[str] = []

        @self.route("GET", "/items/{item_id}", name="get_item")
        def get_item(request: Request, item_id: str) -> Response:
            return json_response({"id": item_id, "q": request.arg("q")})

        @self.route("POST", "/items", name="create_item")
        def create_item(request: Request) -> Response:
            self.created.append(request.params()["text"])
            return json_response({"ok": True}, 201)

    def snapshot(self) -> dict:
        return {"created": self.created}

    def reset(self) -> None:
        super().reset()
        self.created.clear()


@pytest.fixture
def echo():
    app = Echo()
    with Server(app) as server:
        yield app, server.url


def test_routes_path_params_query_json_and_form(echo):
    app, url = echo
    assert requests.get(f"{url}/items/42?q=hi", timeout=5).json() == {"id": "42", "q": "hi"}
    assert requests.post(f"{url}/items", json={"text": "a"}, timeout=5).status_code == 201
    assert requests.post(f"{url}/items", data={"text": "b"}, timeout=5).status_code == 201
    assert app.created == ["a", "b"]
    assert requests.get(f"{url}/nowhere", timeout=5).status_code == 404


def test_control_api_reads_resets_and_injects_faults(echo):
    app, url = echo
    requests.post(f"{url}/items", json={"text": "a"}, timeout=5)
    assert requests.get(f"{url}/_sandbox/state", timeout=5).json() == {"created": ["a"]}
    fault = {"endpoint": "get_item", "kind": "error", "status": 502}
    assert requests.post(f"{url}/_sandbox/faults", json=fault, timeout=5).ok
    assert requests.get(f"{url}/items/1", timeout=5).status_code == 502
    requests.post(f"{url}/_sandbox/reset", timeout=5)
    assert app.created == []
    assert requests.get(f"{url}/items/1", timeout=5).status_code == 200


@pytest.mark.parametrize("status", [500, 502, 503, 429])
def test_error_fault_answers_with_the_status(echo, status):
    app, url = echo
    app.faults.add("get_item", "error", status=status)
    assert requests.get(f"{url}/items/1", timeout=5).status_code == status


def test_hang_fault_runs_into_the_client_timeout(echo):
    app, url = echo
    app.faults.add("get_item", "hang", latency=5)
    with pytest.raises(requests.ReadTimeout):
        requests.get(f"{url}/items/1", timeout=0.3)


def test_malformed_bodies(echo):
    app, url = echo
    app.faults.add("get_item", "html", status=502, times=1)
    app.faults.add("get_item", "truncated", times=1)
    page = requests.get(f"{url}/items/1", timeout=5)
    assert (page.status_code, page.headers["Content-Type"]) == (502, "text/html")
    with pytest.raises(requests.JSONDecodeError):
        requests.get(f"{url}/items/1", timeout=5).json()
    assert requests.get(f"{url}/items/1", timeout=5).json()["id"] == "1"


def test_cut_after_does_the_work_but_never_answers(echo):
    app, url = echo
    app.faults.add("create_item", "cut_after", times=1)
    with pytest.raises(requests.ConnectionError):
        requests.post(f"{url}/items", json={"text": "ghost"}, timeout=5)
    assert app.created == ["ghost"], "the write happened although the client saw a failure"


def test_cut_before_does_nothing(echo):
    app, url = echo
    app.faults.add("create_item", "cut_before", times=1)
    with pytest.raises(requests.ConnectionError):
        requests.post(f"{url}/items", json={"text": "never"}, timeout=5)
    assert app.created == []


def test_rate_faults_are_deterministic_under_a_seed():
    def run(seed: int) -> list[bool]:
        faults = Faults(seed=seed)
        faults.add("x", "error", rate=0.3)
        return [faults.pick("x") is not None for _ in range(200)]

    first = run(1)
    assert first == run(1)
    assert first != run(2)
    assert 40 <= sum(first) <= 80


def test_unknown_fault_kind_is_refused():
    with pytest.raises(ValueError, match="unknown fault kind"):
        Faults().add("x", "explode")


def test_delay_after_does_the_work_then_keeps_the_client_waiting(echo):
    app, url = echo
    app.faults.add("create_item", "delay_after", latency=5, times=1)
    with pytest.raises(requests.ReadTimeout):
        requests.post(f"{url}/items", json={"text": "done, unheard"}, timeout=0.3)
    assert app.created == ["done, unheard"]
