/* Reads a launcher's teed stdout and checks that every line of line_writer
 * arrived once, whole and in order: each line must be PREFIX + "r0-<n> xxx...\n"
 * of the expected width, with n counting up from 0, and LINES lines in all.
 * Other lines (none expected) are counted as foreign. Prints one JSON object.
 *
 *   launcher ... | line_check PREFIX LINES WIDTH
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char** argv) {
  if (argc < 4) {
    fprintf(stderr, "usage: %s PREFIX LINES WIDTH\n", argv[0]);
    return 2;
  }
  const char* prefix = argv[1];
  size_t prefix_len = strlen(prefix);
  long long expected = atoll(argv[2]);
  size_t width = (size_t)atoi(argv[3]);
  size_t line_len = prefix_len + width;

  enum { buffer_size = 4 << 20 };
  static char buffer[buffer_size];
  size_t have = 0;
  long long next = 0, bad = 0, bytes = 0;
  int eof = 0;
  while (!eof || have > 0) {
    if (!eof) {
      ssize_t n = read(STDIN_FILENO, buffer + have, buffer_size - have);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0)
        eof = 1;
      else {
        have += (size_t)n;
        bytes += n;
      }
    }
    size_t start = 0;
    for (;;) {
      char* nl = memchr(buffer + start, '\n', have - start);
      if (!nl) break;
      size_t len = (size_t)(nl - (buffer + start)) + 1;
      const char* line = buffer + start;
      long long number = -1;
      if (len == line_len && memcmp(line, prefix, prefix_len) == 0 && memcmp(line + prefix_len, "r0-", 3) == 0) {
        number = 0;
        for (int d = 0; d < 10; ++d) {
          char c = line[prefix_len + 3 + d];
          if (c < '0' || c > '9') {
            number = -1;
            break;
          }
          number = number * 10 + (c - '0');
        }
      }
      if (number == next)
        ++next;
      else
        ++bad;
      start += len;
    }
    if (start == 0 && have == buffer_size) {
      ++bad;
      have = 0;
      continue;
    } /* no newline in 4 MiB */
    memmove(buffer, buffer + start, have - start);
    have -= start;
    if (eof && have > 0) {
      ++bad;
      have = 0;
    } /* a partial last line */
  }
  int ok = next == expected && bad == 0;
  printf("{\"ok\": %s, \"lines_in_order\": %lld, \"bad_lines\": %lld, \"bytes\": %lld}\n", ok ? "true" : "false", next,
         bad, bytes);
  return ok ? 0 : 1;
}
