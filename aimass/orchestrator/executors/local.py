"""Step runners: how one step's ``run`` is executed (a Ray task, or a thread in this process)."""

from __future__ import annotations

import concurrent.futures as cf
import tempfile
import time
import traceback
from typing import Any, Protocol

from aimass.exceptions import AimassError, RetryableStepError, StepError

__all__ = ["StepRunner", "RayStepRunner", "ThreadStepRunner", "execute_step"]


def execute_step(step_type: str, config: dict[str, Any], ctx) -> dict[str, Any]:
    """Run one step in the current process (inside a Ray task or a thread).

    Returns ``{"outputs": ..., "run_s": seconds spent in the step's own code}`` so the orchestrator can
    report its own overhead (scheduling, tracking, state) separately from the step's work.
    """
    from aimass.spec.configs import get_step_config
    from aimass.steps import get_step

    if not ctx.work_dir:
        ctx.work_dir = tempfile.mkdtemp(prefix=f"aimass-{ctx.step_name}-")
    parsed = get_step_config(step_type).model_validate(config)
    step = get_step(step_type)
    t0 = time.perf_counter()
    try:
        outputs = step.run(ctx, parsed)
        return {"outputs": outputs, "run_s": time.perf_counter() - t0}
    except AimassError:
        raise
    except (ConnectionError, TimeoutError, OSError) as exc:
        raise RetryableStepError(f"{type(exc).__name__}: {exc}") from exc
    except Exception as exc:
        tb = traceback.format_exc(limit=8)
        raise StepError(f"{type(exc).__name__}: {exc}", fix="See the traceback in the step's log.\n" + tb) from exc


class StepRunner(Protocol):
    def submit(self, step_type: str, config: dict[str, Any], ctx, options: dict[str, Any]) -> Any: ...

    def wait(self, handles: list[Any], timeout_s: float) -> list[Any]:
        """The handles that finished (or failed)."""

    def result(self, handle: Any) -> dict[str, Any]:
        """The outputs, or raise the step's AimassError."""

    def cancel(self, handle: Any) -> None: ...


class RayStepRunner:
    """Each step is a Ray task with the step's resources; a crashed worker is a retryable failure."""

    def __init__(self) -> None:
        import ray

        self._remote = ray.remote(max_retries=0)(execute_step)

    def submit(self, step_type, config, ctx, options):
        return self._remote.options(**options, name=f"aimass:{ctx.step_name}").remote(step_type, config, ctx)

    def wait(self, handles, timeout_s):
        import ray

        if not handles:
            time.sleep(timeout_s)
            return []
        done, _ = ray.wait(handles, num_returns=1, timeout=timeout_s)
        if done:  # collect everything else that is already finished too
            more, _ = ray.wait([h for h in handles if h not in done], num_returns=len(handles) - len(done), timeout=0)
            done += more
        return done

    def result(self, handle):
        import ray
        from ray.exceptions import RayTaskError, TaskCancelledError, WorkerCrashedError

        try:
            return ray.get(handle)
        except RayTaskError as exc:
            cause = exc.cause if isinstance(getattr(exc, "cause", None), BaseException) else None
            if isinstance(cause, AimassError):
                raise cause from None
            raise StepError(str(exc).splitlines()[-1][:1000]) from None
        except TaskCancelledError:
            raise StepError("step cancelled (timed out or stopped)", retryable=True) from None
        except WorkerCrashedError as exc:
            raise RetryableStepError(f"the step's worker process died: {exc}") from None
        except ray.exceptions.RayError as exc:
            raise RetryableStepError(f"Ray error: {exc}") from None

    def cancel(self, handle):
        import ray

        ray.cancel(handle, force=True)


class ThreadStepRunner:
    """Runs steps in threads of this process: no Ray, used by unit tests of the scheduler."""

    def __init__(self, max_workers: int = 8) -> None:
        self._pool = cf.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="aimass-step")

    def submit(self, step_type, config, ctx, options):
        return self._pool.submit(execute_step, step_type, config, ctx)

    def wait(self, handles, timeout_s):
        if not handles:
            time.sleep(timeout_s)
            return []
        done, _ = cf.wait(handles, timeout=timeout_s, return_when=cf.FIRST_COMPLETED)
        return list(done)

    def result(self, handle):
        return handle.result()

    def cancel(self, handle):
        handle.cancel()
