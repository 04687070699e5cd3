/* Runs a command and reports its wall time, its own CPU time (not its
 * children's), its children's CPU time and its peak RSS as one JSON object.
 * The command is left a zombie (waitid WNOWAIT) while /proc/<pid>/stat is read,
 * which is how a launcher's own CPU time is told apart from its workers'.
 *
 *   proc_stats OUT.json COMMAND [ARGS...]     exits with the command's status
 */
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char** environ;

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

int main(int argc, char** argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: %s OUT.json COMMAND [ARGS...]\n", argv[0]);
    return 2;
  }
  double start = now();
  pid_t pid;
  int rc = posix_spawnp(&pid, argv[2], NULL, NULL, argv + 2, environ);
  if (rc != 0) {
    fprintf(stderr, "proc_stats: cannot start %s: %s\n", argv[2], strerror(rc));
    return 127;
  }
  siginfo_t info;
  memset(&info, 0, sizeof info);
  if (waitid(P_PID, (id_t)pid, &info, WEXITED | WNOWAIT) != 0) return 127;
  double wall = now() - start;

  /* Fields 14-17 of /proc/<pid>/stat: utime stime cutime cstime, in clock ticks.
   * The command name (field 2) may hold spaces; it ends at the last ')'. */
  unsigned long long ticks[4] = {0, 0, 0, 0};
  char path[64], text[4096];
  snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
  FILE* stat = fopen(path, "r");
  if (stat) {
    size_t n = fread(text, 1, sizeof text - 1, stat);
    text[n] = '\0';
    fclose(stat);
    char* p = strrchr(text, ')');
    /* after ')': state(3) ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt(13) utime(14)... */
    if (p)
      sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu %llu %llu", &ticks[0], &ticks[1], &ticks[2],
             &ticks[3]);
  }
  int status = 0;
  struct rusage usage;
  wait4(pid, &status, 0, &usage);
  double hz = (double)sysconf(_SC_CLK_TCK);
  FILE* out = fopen(argv[1], "w");
  if (!out) return 127;
  fprintf(out,
          "{\"wall_s\": %.6f, \"self_user_s\": %.3f, \"self_sys_s\": %.3f, \"children_user_s\": %.3f, "
          "\"children_sys_s\": %.3f, \"maxrss_kib\": %ld, \"status\": %d}\n",
          wall, ticks[0] / hz, ticks[1] / hz, ticks[2] / hz, ticks[3] / hz, usage.ru_maxrss, status);
  fclose(out);
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  return 128 + WTERMSIG(status);
}
