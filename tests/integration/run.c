/* run.c - kvt_run (run.h): one program run with its output captured, for the
 * integration harness and for tests that link no harness (tests/prefix). */
#include <stdlib.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "run.h"

int kvt_run(char *const argv[], char **ret_out)
{
        char tmpl[] = "/tmp/kvtest-out-XXXXXX";
        int fd = mkstemp(tmpl), st;
        pid_t pid;

        if (fd < 0)
                return -1;
        unlink(tmpl);
        pid = fork();
        if (pid < 0) {
                close(fd);
                return -1;
        }
        if (pid == 0) {
                dup2(fd, 1);
                dup2(fd, 2);
                execv(argv[0], argv);
                _exit(127);
        }
        if (waitpid(pid, &st, 0) != pid) {
                close(fd);
                return -1;
        }
        if (ret_out != NULL) {
                off_t n = lseek(fd, 0, SEEK_END);
                char *out = malloc((size_t)n + 1);

                if (out != NULL) {
                        ssize_t r = pread(fd, out, (size_t)n, 0);

                        out[r > 0 ? r : 0] = '\0';
                }
                *ret_out = out;
        }
        close(fd);
        return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}
