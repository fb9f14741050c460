"""Preemption signals: SIGTERM / SIGUSR1 request a checkpoint at the next step; handlers are restored after."""
import os
import signal

from mim_jax.train import preemption


def test_signals_request_preemption_and_handlers_are_restored():
    assert preemption.PREEMPTED_EXIT_CODE == 75  # the contract launch scripts rely on
    before = {sig: signal.getsignal(sig) for sig in preemption.PREEMPTION_SIGNALS}
    for sig in preemption.PREEMPTION_SIGNALS:
        with preemption.watch():
            assert not preemption.reached_preemption(3)
            os.kill(os.getpid(), sig)  # Python runs the handler before the next bytecode
            assert preemption.reached_preemption(4)
    assert {sig: signal.getsignal(sig) for sig in preemption.PREEMPTION_SIGNALS} == before
    with preemption.watch():  # a new run starts without a request
        assert not preemption.reached_preemption(1)


def test_preempted_message_is_the_documented_line():
    assert str(preemption.Preempted(12)) == "Preempted: saved checkpoint step 12; re-run the same command to resume"
