"""Local paths and bucket URLs (gs://..., any scheme TensorFlow's file systems read) behind
one small interface, so a cloud job can read --data from its bucket. TensorFlow's tf.io.gfile
is imported only for a URL: a local path needs nothing but the standard library."""
import os


def is_url(path: str) -> bool:
    return "://" in path


def _gfile():
    import tensorflow as tf
    return tf.io.gfile


def exists(path: str) -> bool:
    return _gfile().exists(path) if is_url(path) else os.path.exists(path)


def isdir(path: str) -> bool:
    return _gfile().isdir(path) if is_url(path) else os.path.isdir(path)


def join(folder: str, name: str) -> str:
    return folder.rstrip("/") + "/" + name if is_url(folder) else os.path.join(folder, name)


def absolute(path: str) -> str:
    return path if is_url(path) else os.path.abspath(path)


def read_bytes(path: str) -> bytes:
    """The file's bytes; OSError when it cannot be read (as open() raises)."""
    if not is_url(path):
        with open(path, "rb") as f:
            return f.read()
    gfile = _gfile()
    try:
        with gfile.GFile(path, "rb") as f:
            return f.read()
    except Exception as e:  # tf.errors.* from the file system: one OSError, as for a local file
        raise OSError(2, str(e).splitlines()[0][:200]) from e
