"""Copies a child's error file up with PyTorch's ErrorHandler.dump_error_file.

usage: dump_error_file.py CHILD_FILE ERROR_CODE (destination: TORCHELASTIC_ERROR_FILE)
"""
import sys

from torch.distributed.elastic.multiprocessing.errors import ErrorHandler

ErrorHandler().dump_error_file(sys.argv[1], int(sys.argv[2]))
