/* run.h - running a program to completion with its output captured. */
#ifndef KVT_RUN_H
#define KVT_RUN_H

/* Runs argv (NULL-terminated) with stdout/stderr captured into *ret_out
 * (malloc'ed, NUL-terminated; ret_out may be NULL); returns the exit status,
 * or -1. */
int kvt_run(char *const argv[], char **ret_out);

#endif
