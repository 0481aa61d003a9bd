"""The response cache: keys, the byte-bounded LRU, and a ModelVersion that answers hits without its workers."""

from __future__ import annotations

import gc
import threading
from typing import Any

import numpy as np
import pytest

from evserve.gpu.execution import device
from evserve.gpu.execution.contract import ExecRequest
from evserve.gpu.execution.response_cache import (
    INLINE_BYTES,
    ModelCache,
    ResponseCache,
    answer_from,
    entry_of,
    parse_cache_config,
    request_key,
)
from evserve.gpu.execution.stats import ModelStats
from evserve.gpu.execution.version import ModelVersion
from evserve.gpu.execution.worker import InstanceWorker
from evserve.protocol.errors import ProtocolError
from evserve.protocol.types import (
    InferRequest,
    InferResponse,
    InputTensor,
    ModelSignature,
    OutputTensor,
    RequestedOutput,
    TensorSpec,
)
from tests.gpu.execution.test_worker import Job


def request(values: Any, *, shape: tuple[int, ...] | None = None, dtype: str = "FP32", name: str = "IN",
            outputs: list[str] | None = None, rid: str = "", **parameters: Any) -> InferRequest:
    data = np.asarray(values, dtype=np.float32 if dtype == "FP32" else np.int32)
    if shape is not None:
        data = data.reshape(shape)
    return InferRequest(
        "m", "1", id=rid, parameters=parameters, inputs=[InputTensor(name, dtype, tuple(data.shape), data)],
        outputs=[RequestedOutput(n) for n in outputs] if outputs is not None else None,
    )


def response(nbytes: int, tag: str = "") -> InferResponse:
    data = np.zeros(nbytes // 4, dtype=np.float32)
    return InferResponse("m", "1", tag, [OutputTensor("OUT", "FP32", data.shape, data)])


# ---- keys ------------------------------------------------------------------------------------


def test_request_key_is_the_same_for_identical_requests_whatever_their_id_or_priority() -> None:
    key = request_key(b"m\x001", request([1, 2, 3, 4]))
    assert request_key(b"m\x001", request([1, 2, 3, 4], rid="other", priority=1, timeout=5)) == key
    assert len(key) == 16


@pytest.mark.parametrize("other", [
    request([1, 2, 3, 5]),                       # bytes
    request([1, 2, 3, 4], shape=(2, 2)),         # shape (same bytes)
    request([1, 2, 3, 4], name="IN2"),           # input name
    request([1, 2, 3, 4], outputs=["OUT"]),      # requested outputs
    request([1, 2, 3, 4], mode="fast"),          # a parameter the model reads
])
def test_request_key_differs_for_anything_the_answer_may_depend_on(other: InferRequest) -> None:
    assert request_key(b"m\x001", other) != request_key(b"m\x001", request([1, 2, 3, 4]))


def test_request_key_differs_per_version_scope_and_datatype() -> None:
    same_bytes = np.array([1, 2], dtype=np.float32).view(np.int32)
    as_int = InferRequest("m", "1", inputs=[InputTensor("IN", "INT32", (2,), same_bytes)])
    assert request_key(b"s", as_int) != request_key(b"s", request([1, 2]))
    assert request_key(b"a", request([1, 2])) != request_key(b"b", request([1, 2]))


def test_request_key_reads_non_contiguous_inputs_in_row_major_order() -> None:
    values = np.arange(12, dtype=np.float32).reshape(2, 6)
    strided, fortran = values[:, ::2], np.asfortranarray(values)
    for view in (strided, fortran):
        copy = np.ascontiguousarray(view)
        as_view = InferRequest("m", "1", inputs=[InputTensor("IN", "FP32", view.shape, view)])
        as_copy = InferRequest("m", "1", inputs=[InputTensor("IN", "FP32", copy.shape, copy)])
        assert request_key(b"s", as_view) == request_key(b"s", as_copy)


def test_request_key_hashes_bytes_elements_with_their_lengths() -> None:
    def strings(*items: bytes) -> InferRequest:
        data = np.array(items, dtype=np.object_)
        return InferRequest("m", "1", inputs=[InputTensor("S", "BYTES", data.shape, data)])

    assert request_key(b"s", strings(b"ab", b"c")) != request_key(b"s", strings(b"a", b"bc"))
    assert request_key(b"s", strings(b"ab", b"c")) == request_key(b"s", strings(b"ab", b"c"))


# ---- the LRU -----------------------------------------------------------------------------------


def test_ResponseCache_evicts_least_recently_used_by_bytes() -> None:
    one = entry_of(response(1000))
    cache = ResponseCache(3 * one[2])
    for key in (b"a", b"b", b"c"):
        assert cache.insert(key, one, 0)[0]
    assert cache.lookup(b"a", 0)[0] is one  # a is now the most recent
    assert cache.insert(b"d", one, 0)[0]    # evicts b, the least recent
    assert cache.lookup(b"b", 0)[0] is None
    assert all(cache.lookup(key, 0)[0] is one for key in (b"a", b"c", b"d"))
    counters = cache.counters()
    assert (counters.entries, counters.used, counters.evictions) == (3, 3 * one[2], 1)
    assert (counters.lookups, counters.hits, counters.misses) == (5, 4, 1)


def test_ResponseCache_refuses_an_entry_larger_than_itself_and_keeps_the_rest() -> None:
    small = entry_of(response(100))
    cache = ResponseCache(small[2] * 2)
    cache.insert(b"small", small, 0)
    stored, _ = cache.insert(b"big", entry_of(response(10_000)), 0)
    assert not stored
    assert cache.lookup(b"small", 0)[0] is small and cache.counters().evictions == 0


def test_ResponseCache_replacing_a_key_does_not_leak_its_bytes() -> None:
    entry = entry_of(response(100))
    cache = ResponseCache(10 * entry[2])
    for _ in range(5):
        cache.insert(b"k", entry, 0)
    assert cache.counters().used == entry[2] and cache.counters().entries == 1


def test_cache_entry_copies_outputs_read_only_and_answers_with_the_new_request_id() -> None:
    original = response(16, tag="first")
    entry = entry_of(original)
    original.outputs[0].data[:] = 7  # the model reusing its buffer must not change the cache
    answer = answer_from(entry, request([1], rid="second"))
    assert answer.id == "second" and answer.outputs[0].name == "OUT"
    assert not answer.outputs[0].data.any()
    with pytest.raises(ValueError):
        answer.outputs[0].data[0] = 1


def test_parse_cache_config_takes_only_the_local_cache_with_a_size() -> None:
    assert parse_cache_config(["local,size=1048576"]) == 1048576
    assert parse_cache_config([]) == 0
    for bad in ("redis,size=10", "local", "local,size=0", "local,size=-1", "local,bytes=10", "local,size=1MB"):
        with pytest.raises(ValueError, match="--cache-config"):
            parse_cache_config([bad])


# ---- a served version with the cache ----------------------------------------------------------


class CountingInstance:
    """Answers OUT = IN * 2 (or an error for negative input); counts the requests it ran."""

    def __init__(self) -> None:
        self.ran = 0
        self.gate: threading.Event | None = None

    def execute(self, batch: list[Any]) -> None:
        if self.gate is not None:
            self.gate.wait(10)
        for job in batch:
            self.ran += 1
            data = job.request.inputs[0].data
            if (data < 0).any():
                job.finish(ProtocolError("negative input", 400))
            else:
                out = data * 2
                job.finish(InferResponse("m", "1", job.request.id, [OutputTensor("OUT", "FP32", out.shape, out)]))

    def finalize(self) -> None:
        pass


SIGNATURE = ModelSignature("m", "1", 0, (TensorSpec("IN", "FP32", (-1,)),), (TensorSpec("OUT", "FP32", (-1,)),))


def cached_version(cache: ResponseCache) -> tuple[ModelVersion, CountingInstance]:
    instance = CountingInstance()
    stats = ModelStats()
    worker = InstanceWorker("m", instance, 16, None, device.KIND_CPU, 0, stats=stats)
    version = ModelVersion("m", 1, None, [worker], stats, SIGNATURE)
    version.response_cache = ModelCache(cache, "m", "1", stats, version.submit)
    version.start()
    return version, instance


def run(version: ModelVersion, req: InferRequest) -> Any:
    job = Job(req)
    version.submit(job)
    return job.wait()


def test_a_hit_is_answered_without_the_model_and_counted_as_Triton_counts_it() -> None:
    version, instance = cached_version(ResponseCache(1 << 20))
    first = run(version, request([1, 2], rid="a"))
    second = run(version, request([1, 2], rid="b"))
    assert instance.ran == 1
    assert second.id == "b" and second.outputs[0].data.tolist() == [2.0, 4.0] == first.outputs[0].data.tolist()
    run(version, request([3, 4]))
    assert instance.ran == 2
    snapshot = version.stats.snapshot()
    stats = snapshot["inference_stats"]
    assert stats["cache_hit"]["count"] == 1 and stats["cache_hit"]["ns"] > 0
    assert stats["cache_miss"]["count"] == 2 and stats["cache_miss"]["ns"] > 0
    assert stats["success"]["count"] == 3 and stats["queue"]["count"] == 3
    assert stats["compute_infer"]["count"] == 2
    assert snapshot["inference_count"] == 2 and snapshot["execution_count"] == 2
    assert version.drain(2.0)


def test_a_hit_does_not_wait_for_a_busy_instance() -> None:
    version, instance = cached_version(ResponseCache(1 << 20))
    run(version, request([5]))
    instance.gate = threading.Event()
    blocked = Job(request([6]))
    version.submit(blocked)
    assert run(version, request([5])).outputs[0].data.tolist() == [10.0]  # while [6] holds the instance
    assert not blocked.completed.is_set()
    instance.gate.set()
    blocked.wait()
    assert version.drain(2.0)


def test_errors_are_not_cached() -> None:
    version, instance = cached_version(ResponseCache(1 << 20))
    for _ in range(2):
        assert isinstance(run(version, request([-1])), ProtocolError)
    assert instance.ran == 2
    stats = version.stats.snapshot()["inference_stats"]
    assert stats["cache_hit"]["count"] == 0 and stats["cache_miss"]["count"] == 0
    assert stats["fail"]["count"] == 2
    assert version.drain(2.0)


def test_large_requests_are_looked_up_on_the_cache_thread_and_still_hit() -> None:
    version, instance = cached_version(ResponseCache(1 << 24))
    big = np.arange(INLINE_BYTES // 4 + 10, dtype=np.float32)
    answers = [run(version, request(big, rid=str(i))) for i in range(3)]
    assert instance.ran == 1
    assert [a.id for a in answers] == ["0", "1", "2"]
    assert np.array_equal(answers[2].outputs[0].data, big * 2)
    assert version.stats.snapshot()["inference_stats"]["cache_hit"]["count"] == 2
    assert version.drain(2.0)


def test_a_streaming_job_is_cached_too() -> None:
    version, instance = cached_version(ResponseCache(1 << 20))
    finals: list[Any] = []
    done = threading.Event()

    def stream(result: Any, final: bool) -> None:
        if final:
            finals.append(result)
            done.set()

    for _ in range(2):
        done.clear()
        version.submit(ExecRequest(request([7]), lambda result: None, stream=stream))
        assert done.wait(5)
    assert instance.ran == 1 and [f.outputs[0].data.tolist() for f in finals] == [[14.0], [14.0]]
    assert version.drain(2.0)


def test_reloaded_version_does_not_answer_from_its_predecessor() -> None:
    cache = ResponseCache(1 << 20)
    old, old_instance = cached_version(cache)
    run(old, request([1]))
    new, new_instance = cached_version(cache)
    run(new, request([1]))
    assert old_instance.ran == 1 and new_instance.ran == 1
    for version in (old, new):
        assert version.drain(2.0)


def test_ResponseCache_entries_are_not_tracked_by_the_garbage_collector() -> None:
    cache = ResponseCache(1 << 20)
    cache.insert(b"k", entry_of(response(64)), 0)
    for _ in range(5):  # a pass untracks a tuple whose items it has seen untracked: one level per pass
        gc.collect()
    assert not gc.is_tracked(cache.lookup(b"k", 0)[0])


def test_ResponseCache_threaded_stress_keeps_its_byte_count_and_bound() -> None:
    sizes = [entry_of(response(n)) for n in (64, 400, 1600, 4000)]
    cache = ResponseCache(20_000)

    def hammer(seed: int) -> None:
        rng = np.random.default_rng(seed)
        for _ in range(3000):
            key = bytes([int(rng.integers(0, 64))])
            if rng.random() < 0.5:
                cache.lookup(key, 0)
            else:
                cache.insert(key, sizes[int(rng.integers(0, len(sizes)))], 0)

    threads = [threading.Thread(target=hammer, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    counters = cache.counters()
    assert counters.used <= counters.capacity
    assert counters.used == sum(entry[2] for entry in cache._entries.values())
    assert counters.entries == len(cache._entries) and counters.evictions > 0
    assert counters.lookups == counters.hits + counters.misses and counters.lookups > 0
