#!/usr/bin/env node
// Times one ONNX model in ONNX Runtime for Node (the project's copy in .deps/ort), for
// bench/compare.py. Prints one JSON line: version, per-run milliseconds, mean and median, and the
// process's peak resident memory.
//
//   node bench/ort_time.js --model m.onnx --input x.npy [--batch 8] [--warmup 2] [--runs 5]
//                          [--threads 2]
//
// The first --batch rows of the float32 .npy input feed the model's only input; an .npz input
// (np.savez, one array per model input keyed by its name: token ids, masks) feeds every input.
'use strict';
const fs = require('fs');
const path = require('path');

const ORT_DIR = process.env.QFORGE_ORT_DIR ||
    path.join(__dirname, '..', '.deps', 'ort', 'node_modules', 'onnxruntime-node');

function parseArgs(argv) {
  const opts = {batch: 8, warmup: 2, runs: 5, threads: 2};
  for (let i = 0; i < argv.length; i += 2) {
    const key = argv[i].replace(/^--/, '');
    const value = argv[i + 1];
    if (value === undefined) throw new Error(`missing value for ${argv[i]}`);
    opts[key] = ['model', 'input'].includes(key) ? value : Number(value);
  }
  if (!opts.model || !opts.input) throw new Error('--model and --input are required');
  return opts;
}

// Reads a little-endian float32, C-order .npy file into {shape, data}.
function readNpy(file) {
  const buf = fs.readFileSync(file);
  if (buf.readUInt8(0) !== 0x93 || buf.toString('latin1', 1, 6) !== 'NUMPY') {
    throw new Error(`${file}: not an .npy file`);
  }
  const major = buf.readUInt8(6);
  const headerLen = major === 1 ? buf.readUInt16LE(8) : buf.readUInt32LE(8);
  const start = major === 1 ? 10 : 12;
  const header = buf.toString('latin1', start, start + headerLen);
  if (!/'descr':\s*'<f4'/.test(header)) throw new Error(`${file}: expected float32 ('<f4')`);
  if (/'fortran_order':\s*True/.test(header)) throw new Error(`${file}: Fortran order unsupported`);
  const m = header.match(/'shape':\s*\(([^)]*)\)/);
  const shape = m[1].split(',').map((s) => s.trim()).filter((s) => s).map(Number);
  const offset = start + headerLen;
  const count = shape.reduce((a, b) => a * b, 1);
  // Copy into an aligned buffer: the data offset need not be a multiple of 4.
  const data = new Float32Array(count);
  Buffer.from(data.buffer).set(buf.subarray(offset, offset + count * 4));
  return {shape, data};
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const ort = require(ORT_DIR);
  const version = JSON.parse(fs.readFileSync(path.join(ORT_DIR, 'package.json'), 'utf8')).version;

  const t0 = process.hrtime.bigint();
  const session = await ort.InferenceSession.create(opts.model, {
    intraOpNumThreads: opts.threads,
    interOpNumThreads: 1,
    graphOptimizationLevel: 'all',
    executionMode: 'sequential',
  });
  const loadMs = Number(process.hrtime.bigint() - t0) / 1e6;

  const feeds = {};
  // The first opts.batch rows of an array read by tools/ort_dump.js's readers.
  const firstRows = (t, name) => {
    if (t.shape[0] < opts.batch) throw new Error(`${opts.input}: fewer than ${opts.batch} rows`);
    const row = t.data.length / t.shape[0];
    return new ort.Tensor(t.type.ort, t.data.subarray(0, opts.batch * row),
                          [opts.batch, ...t.shape.slice(1)]);
  };
  if (opts.input.endsWith('.npz')) {
    const arrays = await require('../tools/ort_dump.js').readNpz(opts.input);
    for (const name of session.inputNames) {
      if (!arrays[name]) throw new Error(`${opts.input}: no array for model input '${name}'`);
      feeds[name] = firstRows(arrays[name], name);
    }
  } else {
    const npy = readNpy(opts.input);
    feeds[session.inputNames[0]] = firstRows({...npy, type: {ort: 'float32'}});
  }

  for (let i = 0; i < opts.warmup; ++i) await session.run(feeds);
  const ms = [];
  for (let i = 0; i < opts.runs; ++i) {
    const s = process.hrtime.bigint();
    await session.run(feeds);
    ms.push(Number(process.hrtime.bigint() - s) / 1e6);
  }
  const sorted = [...ms].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  const median = sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
  const mean = ms.reduce((a, b) => a + b, 0) / ms.length;
  console.log(JSON.stringify(
      {version, load_ms: loadMs, ms, mean_ms: mean, median_ms: median, peak_mib: peakMiB()}));
}

// This process's peak resident set in MiB (VmHWM: its own address space's high-water mark, not
// that of the process it was started from), or null off Linux.
function peakMiB() {
  try {
    const m = fs.readFileSync('/proc/self/status', 'utf8').match(/^VmHWM:\s+(\d+) kB/m);
    return m ? Number(m[1]) / 1024 : null;
  } catch (e) {
    return null;
  }
}

main().catch((e) => {
  console.error(`ort_time: ${e.message || e}`);
  process.exit(1);
});
