"""glibc malloc settings for CPU training (napari_ssl.train.malloc_tuning): freed step buffers are reused,
not page-faulted in again every step."""
import subprocess
import sys

import pytest

CODE = r"""
import resource, sys, torch
torch.set_num_threads(1)
from napari_ssl.train.malloc_tuning import keep_freed_memory
if sys.argv[1] == "tuned":
    assert keep_freed_memory() is True and keep_freed_memory() is True
from napari_ssl.models.unet import build_unet
net = build_unet("resnet18", in_channels=1, classes=1).encoder
opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
def step(b):
    opt.zero_grad(set_to_none=True)
    net(torch.rand(b, 1, 48, 48))[-1].mean().backward()
    opt.step()
for b in (8, 4, 8):   # warm-up, with a change of batch size as a last, smaller batch gives
    step(b)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for i in range(12):
    step(8 if i % 4 else 6)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", CODE, mode], capture_output=True, text=True, timeout=300,
                         env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr[-2000:]
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_training_steps_stop_page_faulting_their_buffers_in_again():
    plain, tuned = _faults("plain"), _faults("tuned")
    assert tuned < plain / 2, (plain, tuned)
