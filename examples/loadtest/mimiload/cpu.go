package main

import (
	"bufio"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/caddy-mimi/caddy-mimi/internal/cputime"
)

// cpuSample is what a run's CPU accounting reads before and after it:
// mimiload's own CPU time (user and system), and the machine's CPU time
// in all and idle (idle and waiting for I/O) from /proc/stat. Either part
// may be missing (ok flags) on a system that does not provide it.
type cpuSample struct {
	client   time.Duration
	clientOK bool
	// idle and total are in clock ticks, summed over the CPUs.
	idle, total uint64
	machineOK   bool
}

// sampleCPU reads a cpuSample now.
func sampleCPU() cpuSample {
	var s cpuSample
	s.client, s.clientOK = cputime.Process()
	s.idle, s.total, s.machineOK = machineCPU()
	return s
}

// machineCPU reads the first line of /proc/stat ("cpu  user nice system
// idle iowait irq softirq steal ..."): the ticks spent idle or waiting
// for I/O, and the ticks of every state but guest time, which the
// kernel counts inside user and nice already.
func machineCPU() (idle, total uint64, ok bool) {
	f, err := os.Open("/proc/stat")
	if err != nil {
		return 0, 0, false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	if !sc.Scan() {
		return 0, 0, false
	}
	return parseCPULine(sc.Text())
}

// parseCPULine parses /proc/stat's summary line, as machineCPU says.
func parseCPULine(line string) (idle, total uint64, ok bool) {
	fields := strings.Fields(line)
	if len(fields) < 9 || fields[0] != "cpu" {
		return 0, 0, false
	}
	for i, v := range fields[1:9] { // user nice system idle iowait irq softirq steal
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return 0, 0, false
		}
		total += n
		if i == 3 || i == 4 {
			idle += n
		}
	}
	return idle, total, true
}

// cpuUse is a run's CPU accounting: the difference of two samples.
type cpuUse struct {
	client          time.Duration
	idle, total     uint64
	clientOK, macOK bool
}

// since returns the use between s0 and s.
func (s cpuSample) since(s0 cpuSample) cpuUse {
	u := cpuUse{clientOK: s.clientOK && s0.clientOK, macOK: s.machineOK && s0.machineOK}
	if u.clientOK {
		u.client = s.client - s0.client
	}
	if u.macOK {
		u.idle, u.total = s.idle-s0.idle, s.total-s0.total
	}
	return u
}

// add sums o into u.
func (u *cpuUse) add(o cpuUse) {
	u.client += o.client
	u.idle += o.idle
	u.total += o.total
	u.clientOK = u.clientOK && o.clientOK
	u.macOK = u.macOK && o.macOK
}
