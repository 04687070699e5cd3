/* The physical floor for launching N workers: posix_spawn N processes, each with
 * the parent's environment plus its own RANK/LOCAL_RANK/WORLD_SIZE, then wait
 * for all of them. No pipes, no logs, no supervision: anything a launcher does
 * costs at least this much.
 *
 *   spawn_floor N PROGRAM [ARGS...]     exit 0 when every child exited 0
 */
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

extern char** environ;

int main(int argc, char** argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: %s N PROGRAM [ARGS...]\n", argv[0]);
    return 2;
  }
  int n = atoi(argv[1]);
  size_t inherited = 0;
  while (environ[inherited]) ++inherited;

  int failed = 0;
  for (int rank = 0; rank < n; ++rank) {
    /* A distinct environment per child, as a launcher must build. */
    char** env = malloc((inherited + 4) * sizeof(char*));
    char vars[3][64];
    memcpy(env, environ, inherited * sizeof(char*));
    snprintf(vars[0], sizeof vars[0], "RANK=%d", rank);
    snprintf(vars[1], sizeof vars[1], "LOCAL_RANK=%d", rank);
    snprintf(vars[2], sizeof vars[2], "WORLD_SIZE=%d", n);
    env[inherited] = vars[0];
    env[inherited + 1] = vars[1];
    env[inherited + 2] = vars[2];
    env[inherited + 3] = NULL;
    pid_t pid;
    int rc = posix_spawn(&pid, argv[2], NULL, NULL, argv + 2, env);
    free(env);
    if (rc != 0) {
      fprintf(stderr, "spawn_floor: cannot start %s: %s\n", argv[2], strerror(rc));
      failed = 1;
      n = rank;
      break;
    }
  }
  for (int left = n; left > 0; --left) {
    int status = 0;
    if (wait(&status) < 0) break;
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) failed = 1;
  }
  return failed;
}
