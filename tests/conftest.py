"""Suite-wide settings."""
import os

# The suite shares 2 cores with the DDS nodes and subprocesses it starts; a second intra-op
# torch thread then mostly waits for a busy core (several times slower), while alone it gains
# only ~30%. Subprocesses (CLI runs) inherit the setting, so in- and out-of-process runs of the
# same computation also reduce in the same order.
os.environ["OMP_NUM_THREADS"] = "1"

import torch  # noqa: E402

torch.set_num_threads(1)
