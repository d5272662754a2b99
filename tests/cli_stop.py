"Ctrl-C pressed from inside a `sentinel run` at a chosen training step: the runner stops there with a checkpoint."
import signal
import sentinel_nb.cycle as cycle

def ctrl_c_at(monkeypatch, phase: str, step: int):
    "Make the CLI's run send SIGINT once `phase` ('learn 1', 'warmup') reaches `step`; returns the real `run_plasticity`."
    real = cycle.run_plasticity
    def interrupted(*a, **kw):
        def on_step(rec):
            if rec['phase'] == phase and rec['step'] == step: signal.raise_signal(signal.SIGINT)
        return real(*a, on_step=on_step, **kw)
    monkeypatch.setattr(cycle, 'run_plasticity', interrupted)
    return real
