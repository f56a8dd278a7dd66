"""MX rules, reputation windows, automation, the throttle controller and the event-time
sequencer that orders the control step's input."""
