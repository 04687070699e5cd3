/* The worker for the tee figure: writes LINES numbered lines of exactly WIDTH
 * bytes (newline included) to stdout, "r<RANK>-<10-digit number> xxx...\n", in
 * 1 MiB write()s. Its own cost is kept far below any launcher's.
 *
 *   line_writer LINES [WIDTH=100]
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void write_all(const char* data, size_t size) {
  while (size > 0) {
    ssize_t n = write(STDOUT_FILENO, data, size);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) exit(1);
    data += n;
    size -= (size_t)n;
  }
}

int main(int argc, char** argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s LINES [WIDTH]\n", argv[0]);
    return 2;
  }
  long long lines = atoll(argv[1]);
  int width = argc > 2 ? atoi(argv[2]) : 100;
  const char* rank = getenv("RANK");
  if (!rank) rank = "0";
  char head[32];
  int head_len = snprintf(head, sizeof head, "r%s-", rank);
  if (width < head_len + 12) width = head_len + 12;

  enum { buffer_size = 1 << 20 };
  static char buffer[buffer_size];
  size_t used = 0;
  for (long long i = 0; i < lines; ++i) {
    if (used + (size_t)width > buffer_size) {
      write_all(buffer, used);
      used = 0;
    }
    char* line = buffer + used;
    memcpy(line, head, (size_t)head_len);
    /* 10 digits, zero padded, written without snprintf to stay cheap. */
    long long v = i;
    for (int d = 9; d >= 0; --d, v /= 10) line[head_len + d] = (char)('0' + v % 10);
    memset(line + head_len + 10, 'x', (size_t)(width - head_len - 11));
    line[head_len + 10] = ' ';
    line[width - 1] = '\n';
    used += (size_t)width;
  }
  write_all(buffer, used);
  return 0;
}
