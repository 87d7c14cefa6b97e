"""`python tests/kill_during_save.py <llava.train.train flags>`: training that SIGKILLs itself during a save.

With KILL_AT_STEP=N it kills its own process (every rank that reaches the point; under the
DeepSpeed launcher rank 0) in the middle of checkpoint-N's save, as `kill -9` would:
KILL_IN=rng_state after the model and optimizer are written, before the trainer state;
KILL_IN=publish once every file is written, just before checkpoint-N is renamed into place.
Without KILL_AT_STEP it is plain `llava/train/train.py`. Used by tests/test_train_checkpoints.py.
"""

import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from llava.train import checkpoint, trainer  # noqa: E402
from llava.train.train import train  # noqa: E402


def _die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


if os.environ.get("KILL_AT_STEP"):
    step, where = int(os.environ["KILL_AT_STEP"]), os.environ.get("KILL_IN", "rng_state")
    if where == "rng_state":
        save_rng_state = trainer.LLaVATrainer._save_rng_state

        def _save_rng_state(self, output_dir):
            if self.state.global_step == step:
                _die()
            return save_rng_state(self, output_dir)

        trainer.LLaVATrainer._save_rng_state = _save_rng_state
    elif where == "publish":
        publish = checkpoint.publish

        def _publish(staging, final):
            if final.endswith(f"checkpoint-{step}"):
                _die()
            return publish(staging, final)

        checkpoint.publish = _publish
    else:
        raise SystemExit(f"KILL_IN={where!r}: rng_state or publish")

if __name__ == "__main__":
    train(sys.argv[1:])
