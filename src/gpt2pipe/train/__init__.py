"""Stage 3, training: one TrainState (model, optimizer, loader, fp8 scales, guards, RNG) saved and restored as
one (state.py), one optimizer protocol (optimizer_protocol.py) over torch AdamW and ops/flat_adamw.py
(adamw.py), FSDP2 (fsdp.py) and Muon (muon.py), picked by optim.py; the schedule, the guards against bad steps
and preemption (guards.py), the logs (logs.py) and the loop that ties them together (loop.py)."""
