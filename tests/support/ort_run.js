#!/usr/bin/env node
// Runs one ONNX model in ONNX Runtime for Node, the reference of qforge's equivalence tests.
//
//   node ort_run.js <model.onnx> <input.npy>... --out <dir>
//
// Inputs feed the model's inputs in order; output i is written to <dir>/out<i>.npy. One intra-op
// thread and no graph optimizations, so ORT runs each op's plain kernel. The package is found
// through QFORGE_ORT_DIR (the folder holding node_modules/onnxruntime-node).
'use strict';
const fs = require('fs');
const path = require('path');

// .npy descr ↔ ORT tensor type ↔ typed array.
const TYPES = [
  {descr: ['<f4', '=f4'], ort: 'float32', array: Float32Array, npy: '<f4'},
  {descr: ['|i1', '<i1', '=i1'], ort: 'int8', array: Int8Array, npy: '|i1'},
  {descr: ['|u1', '<u1', '=u1'], ort: 'uint8', array: Uint8Array, npy: '|u1'},
  {descr: ['<i4', '=i4'], ort: 'int32', array: Int32Array, npy: '<i4'},
  {descr: ['<i8', '=i8'], ort: 'int64', array: BigInt64Array, npy: '<i8'},
  {descr: ['|b1', '<b1', '=b1'], ort: 'bool', array: Uint8Array, npy: '|b1'},
];

function parseArgs(argv) {
  const opts = {model: null, inputs: [], out: null};
  for (let i = 0; i < argv.length; ++i) {
    if (argv[i] === '--out') {
      opts.out = argv[++i];
    } else if (opts.model === null) {
      opts.model = argv[i];
    } else {
      opts.inputs.push(argv[i]);
    }
  }
  if (!opts.model || !opts.out) {
    throw new Error('usage: node ort_run.js <model.onnx> <input.npy>... --out <dir>');
  }
  return opts;
}

function readNpy(file) {
  const buf = fs.readFileSync(file);
  if (buf.length < 10 || buf.readUInt8(0) !== 0x93 || buf.toString('latin1', 1, 6) !== 'NUMPY') {
    throw new Error(`${file}: not an .npy file`);
  }
  const major = buf.readUInt8(6);
  const headerLen = major === 1 ? buf.readUInt16LE(8) : buf.readUInt32LE(8);
  const start = major === 1 ? 10 : 12;
  const header = buf.toString('latin1', start, start + headerLen);
  const descr = (header.match(/'descr':\s*'([^']*)'/) || [])[1];
  const type = TYPES.find((t) => t.descr.includes(descr));
  if (!type) throw new Error(`${file}: unsupported dtype '${descr}'`);
  if (/'fortran_order':\s*True/.test(header)) throw new Error(`${file}: Fortran order unsupported`);
  const m = header.match(/'shape':\s*\(([^)]*)\)/);
  if (!m) throw new Error(`${file}: no shape in the header`);
  const shape = m[1].split(',').map((s) => s.trim()).filter((s) => s).map(Number);
  const count = shape.reduce((a, b) => a * b, 1);
  const offset = start + headerLen;
  // Copied into a fresh, aligned typed array: the data offset need not be aligned.
  const data = new type.array(count);
  const bytes = count * type.array.BYTES_PER_ELEMENT;
  if (buf.length - offset !== bytes) {
    throw new Error(`${file}: expected ${bytes} bytes of data, got ${buf.length - offset}`);
  }
  Buffer.from(data.buffer).set(buf.subarray(offset, offset + bytes));
  return {type, shape, data};
}

function writeNpy(file, tensor) {
  const type = TYPES.find((t) => t.ort === tensor.type);
  if (!type) throw new Error(`${file}: cannot write an output of type ${tensor.type}`);
  const dims = tensor.dims.map(Number);
  const shape = dims.length === 1 ? `(${dims[0]},)` : `(${dims.join(', ')})`;
  let header = `{'descr': '${type.npy}', 'fortran_order': False, 'shape': ${shape}, }`;
  // NumPy pads the header with spaces and a newline so that the data starts 64-byte aligned.
  const total = 10 + header.length + 1;
  header += ' '.repeat((64 - (total % 64)) % 64) + '\n';
  const prefix = Buffer.alloc(10);
  prefix.writeUInt8(0x93, 0);
  prefix.write('NUMPY', 1, 'latin1');
  prefix.writeUInt8(1, 6);
  prefix.writeUInt8(0, 7);
  prefix.writeUInt16LE(header.length, 8);
  const data = tensor.data;
  const body = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  fs.writeFileSync(file, Buffer.concat([prefix, Buffer.from(header, 'latin1'), body]));
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const ortRoot = process.env.QFORGE_ORT_DIR || path.join(__dirname, '..', '..', '.deps', 'ort');
  const ort = require(path.join(ortRoot, 'node_modules', 'onnxruntime-node'));
  const session = await ort.InferenceSession.create(opts.model, {
    intraOpNumThreads: 1,
    interOpNumThreads: 1,
    graphOptimizationLevel: 'disabled',
    executionProviders: ['cpu'],
  });
  if (opts.inputs.length !== session.inputNames.length) {
    throw new Error(`${opts.model}: the model takes ${session.inputNames.length} inputs, got ` +
                    `${opts.inputs.length}`);
  }
  const feeds = {};
  session.inputNames.forEach((name, i) => {
    const t = readNpy(opts.inputs[i]);
    feeds[name] = new ort.Tensor(t.type.ort, t.data, t.shape);
  });
  const results = await session.run(feeds);
  fs.mkdirSync(opts.out, {recursive: true});
  session.outputNames.forEach((name, i) => {
    writeNpy(path.join(opts.out, `out${i}.npy`), results[name]);
  });
}

main().catch((e) => {
  process.stderr.write(`ort_run: ${e.message}\n`);
  process.exit(1);
});
