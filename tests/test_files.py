import hashlib

from quala.files import sha256


def test_sha256_of_a_file_read_in_blocks(tmp_path):
    data = bytes(range(256)) * 5000  # 1.28 MB: more than one 1 MiB block
    path = tmp_path / "weights.bin"
    path.write_bytes(data)
    assert sha256(path) == hashlib.sha256(data).hexdigest()
    path.write_bytes(data[:-1])
    assert sha256(path) != hashlib.sha256(data).hexdigest()
