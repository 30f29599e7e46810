"""`gongji bench`: how fast is gongji against a real broker, and how close to the transport's own ceiling?

One run:

1. raw ceiling: an echo process (`python -m simulator.bench echo`) takes each message from a durable quorum
   queue and publishes it to a reply queue; both hops use `services.shared.broker.Broker`, i.e. exactly the
   workers' settings (persistent, publisher confirms, mandatory, manual ack after the confirmed publish).
   The bench drives it closed-loop with the same concurrency → raw_round_trips_per_s;
2. the three workers start as separate processes (`gongji worker ...`) in a fresh namespace `bench-<hex>`
   and a temporary data dir; a seeded population of M accounts is loaded in bulk (G001, G003, G103 in
   messages of 5000, G111 for the families), and the load is timed;
3. visits (pharmacy 41 and outpatient 11 at a few facilities, Beijing people, cross-region purchases and
   children paid by a family member's account) go to the POS with presettle=True, in the national flow a HIS
   speaks: a pharmacy 2101 → 2102 (2 round trips to the bureau), an outpatient visit 2201 → 2203 → 2204 →
   2206 → 2207 (5). Each outcome says how many national round trips its visit took; their mean over the
   settled visits is `national_round_trips_per_settlement`, and `ratio` divides the raw ceiling by it. Closed loop (`--concurrency N` outstanding) or open
   loop (`--rate R` Poisson arrivals; latency from the *scheduled* send time, so a stalled system cannot
   hide its backlog). A warm-up is excluded. Latency: command publish → outcome event received;
4. CPU seconds per process (psutil) and peak RSS (VmHWM) of each worker, the echo, the broker
   (beam.smp, if readable) and the bench client itself; an RSS/throughput timeline (for soaks);
5. G199 audits of the accounts and bureau ledgers, then the workers stop and the namespace is deleted.

    ratio = settlements_per_s / (raw_round_trips_per_s / national_round_trips_per_settlement)

Everything is deterministic for a given --seed (population, mix, arrival times), so runs are comparable.

The modules: measure (one run end to end, the command line), population (accounts, families, the visit mix),
client (admin calls, outcome events), traffic (loading, driving visits), raw (the echo ceiling), workers (the
worker processes, their counters), processes (CPU and memory, psutil), metrics (percentiles, slopes),
profiling (py-spy), render (the figures as text), http (through the gateway), inproc (no broker; run with
`python -m simulator.bench inproc`, see __main__).
"""
