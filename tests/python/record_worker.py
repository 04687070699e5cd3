"""A Python worker under PyTorch's @record that fails with a nested cause."""
import sys

from torch.distributed.elastic.multiprocessing.errors import record


def load() -> None:
    raise ValueError("bad shard é")


@record
def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "ok":
        return
    try:
        load()
    except ValueError as e:
        raise RuntimeError("trainer failed") from e


if __name__ == "__main__":
    main()
