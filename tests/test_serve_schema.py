"""`xmcore serve`'s OpenAPI schema tells the truth: Schemathesis (every check, a fixed derandomized set of cases)
against the app in process, and each of the conformance failures it found once, one by one.

The full run (>= 1,000 requests against a real server) is the command in tests/schemathesis.toml."""

from pathlib import Path

import pytest

schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, settings  # noqa: E402

CONFIG = Path(__file__).parent / "schemathesis.toml"


@pytest.fixture(scope="module")
def app(gallery_index, plugins):
    from xmcore.index import SearchIndex
    from xmcore.search.server import create_app

    return create_app(SearchIndex(gallery_index, plugins), plugins)


@pytest.fixture(scope="module")
def api_schema(app):
    return schemathesis.openapi.from_asgi("/openapi.json", app, config=schemathesis.Config.from_path(CONFIG))


@pytest.fixture(scope="module")
def client(app):
    from fastapi.testclient import TestClient

    return TestClient(app)


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_every_response_matches_the_schema(api_schema, mode):
    """A fixed, derandomized set of generated requests over every operation; every check the config enables
    (all of them).  (Schemathesis's own pytest plugin, ``from_fixture``, does not run under pytest 9.)"""
    from hypothesis import given
    from schemathesis import GenerationMode

    @given(case=api_schema.as_strategy(GenerationMode(mode)))
    @settings(max_examples=150, derandomize=True, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    def conforms(case):
        case.call_and_validate()

    conforms()


def test_4xx_are_declared_as_the_one_error_model_the_server_returns(client):
    spec = client.get("/openapi.json").json()
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                if status.startswith("4"):
                    assert response["content"] == {"application/json": {"schema": {"$ref": "#/components/schemas/Detail"}}}, \
                        (method, path, status)
    assert set(spec["paths"]["/items/{item_id}"]["get"]["responses"]) >= {"200", "404"}
    assert set(spec["paths"]["/items/{item_id}/media"]["get"]["responses"]) >= {"200", "404"}
    missing = client.get("/items/image-999999")
    assert missing.status_code == 404 and set(missing.json()) == {"detail"}
    bad = client.get("/search", params={"text": "x", "k": 0})
    assert bad.status_code == 422 and isinstance(bad.json()["detail"], str)


def test_media_is_declared_as_the_types_it_is_served_as(client):
    spec = client.get("/openapi.json").json()
    declared = spec["paths"]["/items/{item_id}/media"]["get"]["responses"]["200"]["content"]
    served = client.get("/items/image-0/media")
    assert list(declared) == ["image/png"] and served.headers["content-type"] == "image/png"


def test_what_the_schema_allows_the_server_takes(client):
    spec = client.get("/openapi.json").json()
    form = spec["paths"]["/search"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert form["required"] == ["image"] and form["properties"]["image"]["minLength"] == 1  # an empty upload is refused
    text = next(p for p in spec["paths"]["/search"]["get"]["parameters"] if p["name"] == "text")
    assert text["schema"]["pattern"] == r"\S"  # only spaces is refused
    target = next(p for p in spec["paths"]["/search"]["get"]["parameters"] if p["name"] == "target")
    assert target["schema"]["enum"] == ["image", "text"]


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH"])
def test_a_405_allows_every_method_of_the_path(client, method):
    response = client.request(method, "/search")
    assert response.status_code == 405 and response.headers["allow"] == "GET, POST"
    assert client.request(method, "/items/image-0").headers["allow"] == "GET"
