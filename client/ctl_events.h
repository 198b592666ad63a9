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

#endif
