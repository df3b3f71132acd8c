"""The /ui/ prediction page in a real headless Chromium (Debian's, driven by Playwright), and the
query-string predictions of `GET /v1/models/<name>:predict`, against a real server."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, Route, expect, sync_playwright

from tabserve.catalog import MODELS
from tabserve.features import Kind
from tests.system_packages import require

CHROMIUM = Path("/usr/bin/chromium")
# Without the networking flags Chromium keeps calling Google's services, which this closed
# network refuses; --no-sandbox because the tests run as root.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 15_000

# The catalog's examples: the form starts empty, so each value is typed in.
IRIS = MODELS["iris"].example_instance()
DRUG = MODELS["drug"].example_instance()


def v1_prediction(server, model: str, instance: dict[str, Any]) -> dict[str, Any]:
    answer = httpx.post(f"{server.url}/v1/models/{model}:predict", json={"instances": [instance]})
    assert answer.status_code == 200, answer.text
    return answer.json()["predictions"][0]


# --- the page in a browser ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    require("chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def record_console_errors(page: Page, errors: list[str]) -> None:
    """Into `errors`: what the page logs as an error (a Content-Security-Policy violation is
    one) or throws."""
    page.on(
        "console",
        lambda message: (
            message.type == "error" and errors.append(f"{message.text} ({message.location['url']})")
        ),
    )
    page.on("pageerror", lambda error: errors.append(str(error)))


@pytest.fixture
def console_errors() -> list[str]:
    return []


@pytest.fixture
def page(browser: Browser, server, console_errors: list[str]) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    record_console_errors(page, console_errors)
    page.goto(f"{server.url}/ui/")
    yield page
    context.close()


def open_model(page: Page, model: str) -> None:
    page.locator(f"nav button[data-model='{model}']").click()
    expect(page.locator(f"#feature-{MODELS[model].features[0].name}")).to_be_visible()


def test_page_lists_every_model(page: Page, server) -> None:
    models = httpx.get(f"{server.url}/v1/models").json()["models"]
    buttons = page.locator("nav button")
    expect(buttons).to_have_count(len(models))
    assert buttons.all_inner_texts() == [model["title"] for model in models]


def test_form_predicts_like_the_api(page: Page, server, tmp_path: Path) -> None:
    open_model(page, "iris")
    for name, value in IRIS.items():
        page.fill(f"#feature-{name}", str(value))
    page.click("#predict")
    expect(page.locator("#result")).to_be_visible()

    expected = v1_prediction(server, "iris", IRIS)
    assert page.inner_text("#result-label") == expected["label"]
    shown = {
        item.get_attribute("data-class"): item.locator(".value").inner_text()
        for item in page.locator("#result-probabilities li").all()
    }
    assert shown == {
        name: f"{probability * 100:.1f}%" for name, probability in expected["probabilities"].items()
    }
    assert page.inner_text("#result-model").startswith("iris:")
    page.screenshot(path=tmp_path / "iris-prediction.png", full_page=True)
    assert (tmp_path / "iris-prediction.png").stat().st_size > 10_000


def test_category_form_predicts_like_the_api(page: Page, server) -> None:
    open_model(page, "drug")
    for name, value in DRUG.items():
        if name in ("sex", "bp", "cholesterol"):
            page.select_option(f"#feature-{name}", value)
        else:
            page.fill(f"#feature-{name}", str(value))
    page.click("#predict")
    expect(page.locator("#result")).to_be_visible()
    assert page.inner_text("#result-label") == v1_prediction(server, "drug", DRUG)["label"]


def test_invalid_values_are_shown_next_to_their_fields(page: Page, tmp_path: Path) -> None:
    open_model(page, "drug")
    page.fill("#feature-age", "500")  # above the plausible maximum of 120
    page.fill("#feature-na_to_k", "lots")  # not a number
    page.select_option("#feature-bp", "LOW")
    page.select_option("#feature-cholesterol", "HIGH")  # sex left empty: required
    page.click("#predict")

    expect(page.locator("#error-age")).to_have_text("Input should be less than or equal to 120")
    expect(page.locator("#error-na_to_k")).to_have_text("Input should be a valid number")
    expect(page.locator("#error-sex")).to_have_text("required field is missing")
    expect(page.locator("#error-bp")).to_have_text("")
    expect(page.locator("#feature-age")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#result")).to_be_hidden()
    page.screenshot(path=tmp_path / "drug-errors.png", full_page=True)

    page.fill("#feature-age", "47")  # fixing the form clears the errors on the next submit
    page.fill("#feature-na_to_k", "13.093")
    page.select_option("#feature-sex", "M")
    page.click("#predict")
    expect(page.locator("#result")).to_be_visible()
    expect(page.locator("#error-age")).to_have_text("")


def fill_form(page: Page, model: str, instance: dict[str, Any]) -> None:
    for feature in MODELS[model].features:
        value = instance[feature.name]
        if feature.kind is Kind.BOOLEAN:
            page.select_option(f"#feature-{feature.name}", str(value).lower())
        elif feature.kind is Kind.CATEGORY:
            page.select_option(f"#feature-{feature.name}", value)
        else:
            page.fill(f"#feature-{feature.name}", str(value))


@pytest.mark.parametrize("model", ["churn", "iris", "spam"])
def test_explain_shows_the_contributions_of_the_api(
    page: Page, server, console_errors: list[str], model: str, tmp_path: Path
) -> None:
    """A binary XGBoost model, a multi-class one (the predicted class is shown), a text model
    (its top tokens too): the bars carry the API's numbers, and they add up to the margin."""
    instance = MODELS[model].example_instance()
    open_model(page, model)
    fill_form(page, model, instance)
    page.click("#predict")
    expect(page.locator("#result")).to_be_visible()
    page.click("#explain")
    expect(page.locator("#explanation")).to_be_visible()

    answer = httpx.post(f"{server.url}/v1/models/{model}:explain", json={"instances": [instance]})
    explanation = answer.json()["explanations"][0]
    section = page.locator("#explanation")
    shown_class = section.get_attribute("data-class")
    if len(explanation["outputs"]) > 1:  # multi-class: the predicted class is explained
        assert shown_class == explanation["label"]
    (output,) = [o for o in explanation["outputs"] if o["class"] == shown_class]
    bars = {
        item.get_attribute("data-name"): float(item.get_attribute("data-contribution"))
        for item in page.locator("#contributions li").all()
    }
    assert bars == output["contributions"]
    margin = float(section.get_attribute("data-margin"))
    base_value = float(section.get_attribute("data-base-value"))
    assert margin == output["margin"]
    assert math.fsum(bars.values()) + base_value == pytest.approx(margin, abs=1e-9)
    tokens = {
        item.get_attribute("data-name"): float(item.get_attribute("data-contribution"))
        for item in page.locator("#tokens li").all()
    }
    assert tokens == {t["token"]: t["contribution"] for t in explanation.get("tokens", [])}
    if model == "spam":
        assert tokens
        expect(page.locator("#tokens-section")).to_be_visible()
    else:
        expect(page.locator("#tokens-section")).to_be_hidden()
    page.screenshot(path=tmp_path / f"{model}-explanation.png", full_page=True)
    assert console_errors == []  # the bars' sizes are set under the CSP without a violation


def test_model_choice_survives_a_reload(page: Page) -> None:
    open_model(page, "drug")
    page.reload()
    expect(page.locator("#model-title")).to_have_text("Drug prescription")


def test_ui_without_slash_redirects(server) -> None:
    answer = httpx.get(f"{server.url}/ui", follow_redirects=True)
    assert answer.status_code == 200
    assert "<title>tabserve" in answer.text


# --- the pages under their Content-Security-Policy (tabserve/security_headers.py) -----------------
def test_page_works_under_its_csp_without_violations(page: Page, console_errors: list[str]) -> None:
    open_model(page, "iris")  # builds the form from /v1/models
    for name, value in IRIS.items():
        page.fill(f"#feature-{name}", str(value))
    page.click("#predict")  # the probability bars set their width from the script
    expect(page.locator("#result-probabilities li")).to_have_count(3)
    assert console_errors == []


def test_the_csp_is_enforced(page: Page, console_errors: list[str]) -> None:
    """An injected inline script does not run, and the browser reports the violation (so the
    console checks above would see one)."""
    with page.expect_console_message(lambda message: "Content Security Policy" in message.text):
        ran = page.evaluate(
            """() => {
                const script = document.createElement("script");
                script.textContent = "window.injected = true";
                document.head.append(script);
                return window.injected === true;
            }"""
        )
    assert ran is False
    assert any("script-src" in error for error in console_errors)


def test_root_opens_the_prediction_page(page: Page, server) -> None:
    page.goto(server.url)
    expect(page).to_have_url(f"{server.url}/ui/#{next(iter(MODELS))}")
    expect(page.locator("nav button")).to_have_count(len(MODELS))


def test_docs_work_offline_under_their_csp(browser: Browser, server) -> None:
    """Every asset comes from this server (any other request is refused here and recorded),
    the operations list renders, and "Try it out" reaches the API: no CSP violation."""
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    elsewhere: list[str] = []

    def this_server_only(route: Route) -> None:
        if route.request.url.startswith(f"{server.url}/"):
            route.continue_()
        else:
            elsewhere.append(route.request.url)
            route.abort()

    context.route("**/*", this_server_only)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    record_console_errors(page, errors)
    page.goto(f"{server.url}/v1/docs")

    document = httpx.get(f"{server.url}/v1/openapi.json").json()
    operations = sum(len(methods) for methods in document["paths"].values())
    expect(page.locator(".opblock")).to_have_count(operations)
    listing = page.locator("#operations-V1_REST-list_models_v1_models_get")
    listing.locator(".opblock-summary").click()
    listing.get_by_role("button", name="Try it out").click()
    listing.get_by_role("button", name="Execute").click()
    expect(listing.locator(".live-responses-table tbody .response-col_status")).to_have_text("200")
    context.close()
    assert elsewhere == []
    assert errors == []


# --- GET /v1/models/<name>:predict?feature=value --------------------------------------------------
def query_predict(server, model: str, params: Any) -> httpx.Response:
    return httpx.get(f"{server.url}/v1/models/{model}:predict", params=params)


@pytest.mark.parametrize(
    ("model", "instance"),
    [
        ("iris", IRIS),
        ("drug", DRUG),
        ("spam", {"text": "WINNER!! Call 09061701461 & claim your £1000 prize now?"}),
        (
            "churn",
            {
                "call_failures": 8, "complains": True, "subscription_months": 38,
                "charge_amount": 0, "seconds_of_use": 4370, "call_count": 71, "sms_count": 5,
                "distinct_called_numbers": 17, "age_group": 3, "tariff_plan": 1, "status": 1,
                "age": 30, "customer_value": 197.64,
            },
        ),
        (
            "admission",  # optional vitals left out: imputed, as when the POST body omits them
            {
                "age": 71, "sex": "male", "arrival_mode": "public_ambulance", "injury": False,
                "mental_state": "alert", "pain": True, "pain_score": 3, "triage_acuity": 2,
            },
        ),
    ],
)  # fmt: skip
def test_query_string_equals_post(server, model: str, instance: dict[str, Any]) -> None:
    params = {name: str(value).lower() if isinstance(value, bool) else str(value)
              for name, value in instance.items()}  # fmt: skip
    answer = query_predict(server, model, params)
    assert answer.status_code == 200, answer.text
    assert answer.json()["predictions"][0] == v1_prediction(server, model, instance)


def test_query_string_reads_booleans_and_whole_floats(server) -> None:
    churn = {
        "call_failures": "8.0", "complains": "yes", "subscription_months": "38",
        "charge_amount": "0", "seconds_of_use": "4370", "call_count": "71", "sms_count": "5",
        "distinct_called_numbers": "17", "age_group": "3", "tariff_plan": "1", "status": "1",
        "age": "30", "customer_value": "197.64",
    }  # fmt: skip
    answer = query_predict(server, "churn", churn)
    assert answer.status_code == 200, answer.text
    typed = {name: int(float(value)) for name, value in churn.items() if name != "complains"}
    typed |= {"complains": True, "customer_value": 197.64}
    assert answer.json()["predictions"][0] == v1_prediction(server, "churn", typed)


@pytest.mark.parametrize(
    ("model", "params", "status", "fields"),
    [
        ("iris", {**IRIS, "sepal_length_cm": "500"}, 422, ["instances[0].sepal_length_cm"]),
        ("iris", {**IRIS, "sepal_length_cm": "nan"}, 422, ["instances[0].sepal_length_cm"]),
        ("iris", {**IRIS, "petal_width_cm": "wide"}, 422, ["instances[0].petal_width_cm"]),
        ("iris", {**IRIS, "petal_width_cm": ""}, 422, ["instances[0].petal_width_cm"]),
        ("iris", {**IRIS, "colour": "blue"}, 422, ["instances[0].colour"]),
        ("drug", {**DRUG, "age": "47.5"}, 422, ["instances[0].age"]),
        ("drug", {**DRUG, "sex": "X"}, 422, ["instances[0].sex"]),
        ("iris", {}, 422, [f"instances[0].{name}" for name in IRIS]),
        ("no_such_model", IRIS, 404, []),
    ],
    ids=[
        "above-maximum", "nan", "not-a-number", "empty", "unknown-feature", "fractional-integer",
        "unknown-category", "nothing-given", "unknown-model",
    ],
)  # fmt: skip
def test_query_string_errors_match_post(
    server, model: str, params: dict[str, Any], status: int, fields: list[str]
) -> None:
    answer = query_predict(server, model, params)
    assert answer.status_code == status, answer.text
    assert sorted(detail["field"] for detail in answer.json()["details"]) == sorted(fields)


def test_query_string_repeated_parameter_is_rejected(server) -> None:
    params = [*((k, str(v)) for k, v in IRIS.items()), ("sepal_length_cm", "4.0")]
    answer = query_predict(server, "iris", params)
    assert answer.status_code == 422
    assert answer.json()["details"] == [
        {"field": "instances[0].sepal_length_cm", "reason": "given more than once"}
    ]
