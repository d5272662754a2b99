"Several processes (torchrun, gloo on the CPU): importance scores are averaged, so every process prunes the same heads."
import json, os, shutil, socket, subprocess, sys
from pathlib import Path
import pytest

def free_port():
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

@pytest.mark.skipif(shutil.which('torchrun') is None, reason='torchrun not on PATH')
def test_two_processes_prune_the_same_heads(tmp_path):
    script = Path(__file__).parent/'scripts'/'dist_prune.py'
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    r = subprocess.run(['torchrun', '--nproc_per_node', '2', '--master_addr', '127.0.0.1', '--master_port', str(free_port()),
                        str(script), str(tmp_path)], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = (json.loads((tmp_path/f'rank{i}.json').read_text()) for i in (0, 1))
    assert a['world'] == b['world'] == 2
    assert a['local_gradient'] != b['local_gradient']      # each process saw different batches...
    assert a['avg_gradient'] == b['avg_gradient']          # ...but the averaged scores agree
    assert a['pruned'] == b['pruned'] and len(a['pruned']) == 2
    assert a['steps'] == b['steps'] == 3 and a['checksum'] == b['checksum']   # training stayed in lockstep
    assert a['pruned_frozen'] and b['pruned_frozen']      # pruned heads frozen under DDP too
