/* ctl_events.h - `kvpoolctl events`, implemented in ctl_events.c.
 */
#ifndef CTL_EVENTS_H
#define CTL_EVENTS_H

/* Subscribes to kvpoold's event stream at events_url and prints each event as
 * one line (readable, or one JSON object per line when json is set), reporting
 * gaps in sequence numbers.  argc/argv are the command's own words, argv[0]
 * being "events" (it reads --count N there).  Returns the process exit status:
 * 0 after a shutdown event, SIGINT or --count events; 1 on failure; 2 on a
 * usage error. */
int ctl_events_main(const char *events_url, int json, int argc, char **argv);

/* Flushes stdout (kvpoolctl.c): 0, or 1, the failure exit status, after
 * saying on stderr, after "who: ", why the output could not be written.
 * Output that could not be written (a full disk, a closed pipe) is a
 * failure, not a silent success. */
int ctl_output_done(const char *who);

#endif
