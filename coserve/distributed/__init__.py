"""Scale-out: the cluster file, the expert placement planner and its re-planning (later: the Ray
Serve wiring and replica choice). Nothing here imports the engine or the server; importing this
package runs nothing and needs no Ray.
"""
