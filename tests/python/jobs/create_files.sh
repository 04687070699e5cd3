#!/bin/sh
# A non-Python worker (run with --no-python): says what it creates on stdout,
# then creates <dir>/<rank>.
set -eu
echo "creating $1/$RANK"
touch "$1/$RANK"
echo "rank $RANK done" >&2
