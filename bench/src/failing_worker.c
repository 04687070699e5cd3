/* A worker for the failure-reaction figure: the rank named by FAIL_RANK (default
 * 2) exits with code 3 at once; every other rank sleeps up to 30 s and dies at
 * once on SIGTERM (default disposition), as a busy training rank would.
 */
#include <stdlib.h>
#include <unistd.h>

int main(void) {
  const char* rank = getenv("RANK");
  const char* fail = getenv("FAIL_RANK");
  if (rank && atoi(rank) == (fail ? atoi(fail) : 2)) return 3;
  sleep(30);
  return 0;
}
