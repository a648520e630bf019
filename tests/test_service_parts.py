"""The service's parts without a server: settings from the environment, the embedding cache's LRU-by-bytes, the
router's rules and the segmenter against the store's model run step by step."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service import imaging
from service.cache import Embedding, EmbeddingCache
from service.config import Settings, SettingsError
from service.dicom import DicomImage, read_dicom
from service.errors import RequestError
from service.schemas import Prompt
from service.segmenter import Router, Segmenter, Served, encode_jobs
from service.store import ModelStore
from tests import dicomfiles as files
from tests.service_client import reference

REPO = Path(__file__).resolve().parent.parent


def test_settings_come_from_the_environment_with_defaults() -> None:
    assert Settings.from_env({}) == Settings()
    settings = Settings.from_env(
        {"MEDSAMIX_MODELS": "/srv/models", "MEDSAMIX_MAX_PROMPTS": "16", "MEDSAMIX_BATCHING": "off", "OTHER": "x"}
    )
    assert (settings.models, settings.max_prompts, settings.batching) == (Path("/srv/models"), 16, False)
    assert (Settings().max_points, Settings.from_env({"MEDSAMIX_MAX_POINTS": "4"}).max_points) == (32, 4)


def test_the_encoder_batches_by_default_on_a_gpu_only() -> None:
    """On a CPU a batch gains nothing and BentoML's batcher makes the 10th and 11th lone images of a new server
    wait for companions (benchmarks/RESULTS.md): batching is a GPU deployment's default, and either can set it."""
    assert Settings.from_env({}).batching is False
    assert Settings.from_env({"MEDSAMIX_DEVICE": "gpu"}).batching is True
    assert Settings.from_env({"MEDSAMIX_BATCHING": "1"}).batching is True
    assert Settings.from_env({"MEDSAMIX_DEVICE": "gpu", "MEDSAMIX_BATCHING": "0"}).batching is False


@pytest.mark.parametrize(
    "name, value, phrase",
    [
        ("MEDSAMIX_MAX_PROMPTS", "0", "positive integer"),
        ("MEDSAMIX_MAX_POINTS", "-3", "positive integer"),
        ("MEDSAMIX_CACHE_MB", "lots", "positive integer"),
        ("MEDSAMIX_DEVICE", "tpu", "one of cpu, gpu"),
        ("MEDSAMIX_BATCHING", "maybe", "one of 1/0"),
        ("MEDSAMIX_TOKEN", " ", "set but empty"),
    ],
)
def test_a_bad_setting_is_one_sentence_naming_the_variable(name: str, value: str, phrase: str) -> None:
    with pytest.raises(SettingsError, match=phrase) as error:
        Settings.from_env({name: value})
    assert str(error.value).startswith(name)


def _embedding(nbytes: int) -> Embedding:
    return Embedding(np.zeros(nbytes // 4, np.float32), imaging.Frame((8, 8), (8, 8)))


def test_cache_evicts_the_least_recently_used_to_stay_within_its_bytes() -> None:
    cache = EmbeddingCache(max_bytes=1000)
    for key in "abc":
        cache.put(key, _embedding(400))  # c evicts a
    assert cache.get("a") is None and len(cache) == 2 and cache.nbytes == 800
    assert cache.get("b") is not None  # b is now the most recent: d evicts c
    cache.put("d", _embedding(400))
    assert cache.get("c") is None and cache.get("b") is not None and cache.get("d") is not None
    cache.put("huge", _embedding(2000))  # larger than the cache: not kept, nothing evicted
    assert cache.get("huge") is None and len(cache) == 2
    assert (cache.hits, cache.misses) == (3, 3)


@pytest.fixture(scope="module")
def demo() -> Served:
    return Served.of(ModelStore(REPO / "models").load("demo", providers=["CPUExecutionProvider"]))


def test_router_rules(demo: Served) -> None:
    liver = Served(demo.model, demo.geometry, demo.size, ("ct_liver",), {"ct_liver": "ct_abdomen"})
    models = {"demo": demo, "liver": liver}
    router = Router(models, "demo")
    assert router.route(None, None) is demo
    assert router.route("ct_liver", None) is liver  # a single-task model for the task
    assert router.route("ct_kidney", None) is demo  # else the default, if it covers the task
    assert router.route("ct_liver", "demo") is demo  # an explicit model wins
    with pytest.raises(RequestError, match="names a model this server does not serve") as error:
        router.route(None, "x")
    assert error.value.status == 404
    with pytest.raises(RequestError, match="prompt 0 names a task no model"):
        router.route("lung", None)
    with pytest.raises(RequestError, match="was not merged for the task prompt 0 names"):
        router.route("ct_kidney", "liver")
    with pytest.raises(RequestError, match="no default model"):
        Router({"liver": liver}, "demo").route(None, None)


def test_segmenter_equals_the_steps_run_by_hand_and_caches(demo: Served) -> None:
    calls: list[int] = []

    def encode(jobs):
        calls.append(len(jobs))
        return encode_jobs({"demo": demo}, jobs)

    segmenter = Segmenter({"demo": demo}, "demo", encode, EmbeddingCache(2**24), max_prompts=4)
    dicom = files.ct_image(files.ct_hu(60, 90, seed=1))
    boxes = [[5, 5, 50, 40], [30, 10, 88, 59]]
    result = segmenter.segment(read_dicom(dicom), [Prompt(box=b, task="ct_liver") for b in boxes])
    expected, ious = reference(REPO / "models", "demo", dicom, boxes, preset="ct_abdomen")
    np.testing.assert_array_equal(np.stack([r.mask for r in result.results]), expected)
    np.testing.assert_allclose([r.iou for r in result.results], ious, atol=1e-6)
    assert (result.encoded, result.cached, calls) == (1, 0, [1])
    again = segmenter.segment(read_dicom(dicom), [Prompt(box=boxes[0], task="ct_liver")])
    assert (again.encoded, again.cached, calls) == (0, 1, [1])
    np.testing.assert_array_equal(again.results[0].mask, expected[0])
    with pytest.raises(RequestError, match="at most 4") as error:
        segmenter.segment(read_dicom(dicom), [Prompt(box=boxes[0])] * 5)
    assert error.value.status == 413


def test_segmenter_decodes_clicks_and_limits_them_per_prompt(demo: Served) -> None:
    """Prompts of three lengths on one frame (grouped by number of points) equal each prompt run by hand, in
    request order; a click outside the image and too many clicks are refused naming the prompt."""
    segmenter = Segmenter(
        {"demo": demo}, "demo", lambda jobs: encode_jobs({"demo": demo}, jobs), EmbeddingCache(2**24), 8, max_points=3
    )
    dicom = files.ct_image(files.ct_hu(60, 90, seed=3))
    prompts = [
        {"foreground": [[40, 30]]},
        {"box": [5, 5, 50, 40], "foreground": [[20, 20]], "background": [[6, 39]]},
        {"box": [30, 10, 88, 59]},
        {"foreground": [[40, 30], [45, 35]], "background": [[89, 59.5]]},
    ]
    result = segmenter.segment(read_dicom(dicom), [Prompt(**p) for p in prompts])
    expected, ious = reference(REPO / "models", "demo", dicom, prompts)
    np.testing.assert_array_equal(np.stack([r.mask for r in result.results]), expected)
    np.testing.assert_allclose([r.iou for r in result.results], ious, atol=1e-6)
    with pytest.raises(RequestError, match="^prompt 1's foreground click 0 lies outside the image of shape") as error:
        segmenter.segment(read_dicom(dicom), [Prompt(box=[5, 5, 50, 40]), Prompt(foreground=[[90.5, 3]])])
    assert error.value.status == 400
    with pytest.raises(RequestError, match="^prompt 0 has more clicks than this server takes; expected at most 3") as e:
        segmenter.segment(read_dicom(dicom), [Prompt(foreground=[[1, 1]] * 2, background=[[2, 2]] * 2)])
    assert e.value.status == 413
    with pytest.raises(ValueError, match="expected a prompt to have a box or at least one foreground or background"):
        Prompt(foreground=[], label="liver")


def test_a_file_resent_byte_for_byte_is_not_decoded_again(demo: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    displayed: list[int] = []
    display = DicomImage.display

    def counted(self: DicomImage, frame: int, preset: str | None = None):
        displayed.append(frame)
        return display(self, frame, preset)

    monkeypatch.setattr(DicomImage, "display", counted)
    segmenter = Segmenter(
        {"demo": demo}, "demo", lambda jobs: encode_jobs({"demo": demo}, jobs), EmbeddingCache(2**24), 4
    )
    dicom = files.ct_image(files.ct_hu(60, 90, seed=2))
    first = segmenter.segment(read_dicom(dicom), [Prompt(box=[5, 5, 50, 40])])
    again = segmenter.segment(read_dicom(dicom), [Prompt(box=[5, 5, 50, 40])])  # the same bytes: no decode
    assert (len(displayed), again.cached) == (1, 1)
    np.testing.assert_array_equal(again.results[0].mask, first.results[0].mask)
    windowed = files.with_changes(dicom, WindowCenter=300, WindowWidth=1500)  # same pixels, another display
    segmenter.segment(read_dicom(windowed), [Prompt(box=[5, 5, 50, 40])])
    assert len(displayed) == 2
    segmenter.segment(read_dicom(dicom), [Prompt(box=[5, 5, 50, 40])], preset="ct_lung")  # another window
    assert len(displayed) == 3


class _Encoder:
    """The encoder service's proxy as the front sees it: records each call's size, or sheds like BentoML's batching
    does past its latency bound."""

    def __init__(self, shed: bool = False) -> None:
        self.calls: list[int] = []
        self.shed = shed

    def encode(self, jobs: list) -> list:
        from bentoml.exceptions import ServiceUnavailable

        if self.shed:
            raise ServiceUnavailable('{"error": "process is overloaded"}')
        self.calls.append(len(jobs))
        return [job["model"] for job in jobs]


def _front(encoder: _Encoder, max_batch_size: int = 3):
    from types import SimpleNamespace

    from service.service import MedSAMix

    front = SimpleNamespace(settings=Settings(max_batch_size=max_batch_size, max_latency_ms=250), encoder=encoder)
    return lambda jobs: MedSAMix.inner._encode(front, jobs)


def test_the_front_sends_the_encoder_at_most_one_batch_per_call_in_order() -> None:
    encoder = _Encoder()
    jobs = [{"model": str(i)} for i in range(8)]
    assert _front(encoder)(jobs) == [str(i) for i in range(8)]
    assert encoder.calls == [3, 3, 2]


def test_an_overloaded_encoder_is_a_503_of_one_sentence() -> None:
    with pytest.raises(RequestError, match="overloaded.*within 250 ms") as error:
        _front(_Encoder(shed=True))([{"model": "demo"}])
    assert error.value.status == 503
