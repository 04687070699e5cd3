/* The floor for the tee figure: the least any tee must do. Reads stdin in
 * 64 KiB blocks, writes each block to LOGFILE, and writes the block's whole
 * lines, each behind PREFIX, to stdout in one write(); a partial line waits for
 * its end. No processes, no polling: put between line_writer and line_check it
 * tells how fast this machine moves the bytes at all.
 *
 *   line_writer ... | tee_floor LOGFILE PREFIX | line_check ...
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void write_all(int fd, const char* data, size_t size) {
  while (size > 0) {
    ssize_t n = write(fd, data, size);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) exit(1);
    data += n;
    size -= (size_t)n;
  }
}

int main(int argc, char** argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: %s LOGFILE PREFIX\n", argv[0]);
    return 2;
  }
  int log = open(argv[1], O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (log < 0) {
    perror(argv[1]);
    return 1;
  }
  const char* prefix = argv[2];
  size_t prefix_len = strlen(prefix);
  enum { block = 65536 };
  static char in[block];
  /* Worst case: every byte a newline, each behind a prefix, plus a carried partial line. */
  size_t out_cap = 2 * block * (prefix_len + 1) + block;
  char* out = malloc(out_cap);
  char* partial = malloc(1 << 20);
  size_t partial_len = 0;
  for (;;) {
    ssize_t got = read(STDIN_FILENO, in, block);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) break;
    write_all(log, in, (size_t)got);
    size_t used = 0, start = 0;
    for (;;) {
      char* nl = memchr(in + start, '\n', (size_t)got - start);
      if (!nl) break;
      size_t len = (size_t)(nl - (in + start)) + 1;
      memcpy(out + used, prefix, prefix_len);
      used += prefix_len;
      if (partial_len) {
        memcpy(out + used, partial, partial_len);
        used += partial_len;
        partial_len = 0;
      }
      memcpy(out + used, in + start, len);
      used += len;
      start += len;
    }
    size_t rest = (size_t)got - start;
    if (rest && partial_len + rest <= (1 << 20)) {
      memcpy(partial + partial_len, in + start, rest);
      partial_len += rest;
    }
    if (used) write_all(STDOUT_FILENO, out, used);
  }
  if (partial_len) {
    write_all(STDOUT_FILENO, prefix, prefix_len);
    write_all(STDOUT_FILENO, partial, partial_len);
    write_all(STDOUT_FILENO, "\n", 1);
  }
  return 0;
}
