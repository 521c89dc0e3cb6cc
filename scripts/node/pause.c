/* The pod sandbox's "pause" process: holds the pod's namespaces and waits. It reaps
 * nothing (no shared PID namespace here) and exits on SIGTERM or SIGINT, as the
 * upstream pause does. Built static by scripts/node.sh into localhost/pause:3.10. */
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

static void stop(int signal) {
  (void)signal;
  _exit(0);
}

int main(void) {
  signal(SIGTERM, stop);
  signal(SIGINT, stop);
  for (;;) pause();
  return 0;
}
