#!/usr/bin/env node
// Dumps a Q/DQ model's per-tensor values from ONNX Runtime, for `qforge verify --reference`.
//
//   node tools/ort_dump.js <model.onnx> --data <inputs.npy>... -o <dump.npz | dump.json>
//   node tools/ort_dump.js <model.onnx> --data <inputs.npz> -o <dump.npz | dump.json>
//        [--optimization all|disabled] [--threads N] [--qforge PATH] [--no-mark]
//
// The model's Q/DQ points (each QuantizeLinear's input and integer output) are first marked as
// graph outputs by `qforge verify --mark-outputs` (skipped with --no-mark, for a model marked
// already), then ONNX Runtime runs the inputs (one .npy per model input, each one batch, or one
// .npz of an array per input keyed by input name, as `qforge verify --data` takes) and
// every output is written: as an .npz (one .npy member per tensor, as np.savez writes) or, for a
// .json path, as Polygraphy RunResults JSON (what `polygraphy run --save-outputs` writes).
// --optimization sets ORT's graph optimisation level (default all, as deployed). The packages
// come from QFORGE_ORT_DIR (default .deps/ort: onnxruntime-node) and Debian's node-jszip.
'use strict';
const fs = require('fs');
const os = require('os');
const path = require('path');
const {execFileSync} = require('child_process');

const root = path.join(__dirname, '..');

// .npy descr ↔ ORT tensor type ↔ typed array.
const TYPES = [
  {descr: ['<f4', '=f4'], ort: 'float32', array: Float32Array, npy: '<f4'},
  {descr: ['|i1', '<i1', '=i1'], ort: 'int8', array: Int8Array, npy: '|i1'},
  {descr: ['|u1', '<u1', '=u1'], ort: 'uint8', array: Uint8Array, npy: '|u1'},
  {descr: ['<i4', '=i4'], ort: 'int32', array: Int32Array, npy: '<i4'},
  {descr: ['<i8', '=i8'], ort: 'int64', array: BigInt64Array, npy: '<i8'},
  {descr: ['|b1', '<b1', '=b1'], ort: 'bool', array: Uint8Array, npy: '|b1'},
];

function usage() {
  return 'usage: node tools/ort_dump.js <model.onnx> --data <inputs.npy>...|<inputs.npz> -o <dump.npz|dump.json> ' +
         '[--optimization all|disabled] [--threads N] [--qforge PATH] [--no-mark]';
}

function parseArgs(argv) {
  const opts = {model: null, inputs: [], out: null, optimization: 'all', threads: 1,
                qforge: null, mark: true};
  for (let i = 0; i < argv.length; ++i) {
    const a = argv[i];
    const next = () => {
      if (i + 1 >= argv.length) throw new Error(`${a} needs a value; ${usage()}`);
      return argv[++i];
    };
    if (a === '--data') {
      opts.inputs.push(next());
    } else if (a === '-o' || a === '--output') {
      opts.out = next();
    } else if (a === '--optimization') {
      opts.optimization = next();
      if (!['all', 'disabled', 'basic', 'extended'].includes(opts.optimization)) {
        throw new Error(`--optimization: expected all, extended, basic or disabled, got ` +
                        `'${opts.optimization}'`);
      }
    } else if (a === '--threads') {
      opts.threads = Number(next());
      if (!Number.isInteger(opts.threads) || opts.threads < 1) {
        throw new Error(`--threads: expected a positive integer, got '${argv[i]}'`);
      }
    } else if (a === '--qforge') {
      opts.qforge = next();
    } else if (a === '--no-mark') {
      opts.mark = false;
    } else if (a === '-h' || a === '--help') {
      process.stdout.write(usage() + '\n');
      process.exit(0);
    } else if (a.startsWith('-')) {
      throw new Error(`unknown option '${a}'; ${usage()}`);
    } else if (opts.model === null) {
      opts.model = a;
    } else {
      throw new Error(`unexpected argument '${a}'; ${usage()}`);
    }
  }
  if (!opts.model || !opts.out || opts.inputs.length === 0) throw new Error(usage());
  return opts;
}

function readNpy(file) {
  let buf;
  try {
    buf = fs.readFileSync(file);
  } catch (e) {
    throw new Error(`cannot read '${file}': ${e.code || e.message}`);
  }
  return parseNpy(buf, file);
}

// An .npy file's bytes as {type, shape, data}; `file` names it in errors.
function parseNpy(buf, file) {
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
  const data = new type.array(count);
  const bytes = count * type.array.BYTES_PER_ELEMENT;
  if (buf.length - offset !== bytes) {
    throw new Error(`${file}: expected ${bytes} bytes of data, got ${buf.length - offset}`);
  }
  Buffer.from(data.buffer).set(buf.subarray(offset, offset + bytes));
  return {type, shape, data};
}

// The arrays of an .npz (np.savez), by name (the member's name less '.npy').
async function readNpz(file) {
  let buf;
  try {
    buf = fs.readFileSync(file);
  } catch (e) {
    throw new Error(`cannot read '${file}': ${e.code || e.message}`);
  }
  let zip;
  try {
    zip = await loadJSZip().loadAsync(buf);
  } catch (e) {
    throw new Error(`${file}: not an .npz archive (${e.message})`);
  }
  const arrays = {};
  for (const member of Object.keys(zip.files)) {
    if (!member.endsWith('.npy')) continue;
    const bytes = await zip.file(member).async('nodebuffer');
    arrays[member.slice(0, -4)] = parseNpy(bytes, `${file}: '${member}'`);
  }
  return arrays;
}

// The bytes np.save writes for an ORT tensor (format 1.0, data 64-byte aligned).
function encodeNpy(tensor, name) {
  const type = TYPES.find((t) => t.ort === tensor.type);
  if (!type) throw new Error(`output '${name}': cannot write a tensor of type ${tensor.type}`);
  const dims = tensor.dims.map(Number);
  const shape = dims.length === 1 ? `(${dims[0]},)` : `(${dims.join(', ')})`;
  let header = `{'descr': '${type.npy}', 'fortran_order': False, 'shape': ${shape}, }`;
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
  return Buffer.concat([prefix, Buffer.from(header, 'latin1'), body]);
}

// Debian installs node-jszip under /usr/share/nodejs, which a Node from elsewhere does not
// search; its own dependencies resolve through NODE_PATH.
function loadJSZip() {
  try {
    return require('jszip');
  } catch (e) {
    const debian = '/usr/share/nodejs';
    process.env.NODE_PATH = [process.env.NODE_PATH, debian].filter((p) => p).join(path.delimiter);
    require('module').Module._initPaths();
    try {
      return require('jszip');
    } catch (e2) {
      throw new Error('jszip is missing: install Debian\'s node-jszip (scripts/install-deps)');
    }
  }
}

function findQforge(opts) {
  if (opts.qforge) return opts.qforge;
  if (process.env.QFORGE) return process.env.QFORGE;
  const built = path.join(root, 'build', 'tools', 'qforge');
  return fs.existsSync(built) ? built : 'qforge';
}

async function writeAtomic(file, bytes) {
  const temp = `${file}.tmp.${process.pid}`;
  try {
    fs.writeFileSync(temp, bytes);
    fs.renameSync(temp, file);
  } catch (e) {
    try {
      fs.unlinkSync(temp);
    } catch (ignored) {
      // nothing was written
    }
    throw new Error(`cannot write '${file}': ${e.code || e.message}`);
  }
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const ortRoot = process.env.QFORGE_ORT_DIR || path.join(root, '.deps', 'ort');
  const ort = require(path.join(ortRoot, 'node_modules', 'onnxruntime-node'));

  let model = opts.model;
  let temp = null;
  if (opts.mark) {
    temp = fs.mkdtempSync(path.join(os.tmpdir(), 'ort_dump-'));
    model = path.join(temp, 'marked.onnx');
    try {
      execFileSync(findQforge(opts), ['verify', opts.model, '--mark-outputs', model],
                   {stdio: ['ignore', 'ignore', 'pipe']});
    } catch (e) {
      fs.rmSync(temp, {recursive: true, force: true});
      const why = e.stderr ? e.stderr.toString().trim() : e.message;
      throw new Error(`marking the points of '${opts.model}' failed: ${why}`);
    }
  }
  try {
    const session = await ort.InferenceSession.create(model, {
      intraOpNumThreads: opts.threads,
      interOpNumThreads: 1,
      graphOptimizationLevel: opts.optimization,
      executionProviders: ['cpu'],
    });
    const feeds = {};
    if (opts.inputs.length === 1 && opts.inputs[0].endsWith('.npz')) {
      // One array per model input, keyed by input name (as `qforge run --data` reads it).
      const arrays = await readNpz(opts.inputs[0]);
      for (const name of session.inputNames) {
        const t = arrays[name];
        if (!t) {
          throw new Error(`${opts.inputs[0]}: no array for model input '${name}' (it holds ` +
                          `${Object.keys(arrays).join(', ') || 'nothing'})`);
        }
        feeds[name] = new ort.Tensor(t.type.ort, t.data, t.shape);
      }
    } else {
      if (opts.inputs.length !== session.inputNames.length) {
        throw new Error(`${opts.model}: the model takes ${session.inputNames.length} inputs, ` +
                        `got ${opts.inputs.length}`);
      }
      session.inputNames.forEach((name, i) => {
        const t = readNpy(opts.inputs[i]);
        feeds[name] = new ort.Tensor(t.type.ort, t.data, t.shape);
      });
    }
    const results = await session.run(feeds);
    let bytes;
    if (opts.out.endsWith('.json')) {
      // Polygraphy RunResults: arrays as base64 .npy inside LazyArray wrappers.
      const outputs = {};
      for (const name of session.outputNames) {
        outputs[name] = {
          values: {array: encodeNpy(results[name], name).toString('base64'),
                   polygraphy_class: 'ndarray'},
          polygraphy_class: 'LazyArray',
        };
      }
      const runner = 'onnxrt-runner-N0-ort_dump';
      const iteration = {outputs, runtime: 0, runner_name: runner,
                         polygraphy_class: 'IterationResult'};
      bytes = JSON.stringify({lst: [[runner, [iteration]]], polygraphy_class: 'RunResults'},
                             null, 4);
    } else {
      const JSZip = loadJSZip();
      const zip = new JSZip();
      for (const name of session.outputNames) {
        zip.file(`${name}.npy`, encodeNpy(results[name], name));
      }
      bytes = await zip.generateAsync({type: 'nodebuffer', compression: 'STORE'});
    }
    await writeAtomic(opts.out, bytes);
    process.stdout.write(`ort_dump: ${session.outputNames.length} tensors of ${opts.model} ` +
                         `(graph optimisations ${opts.optimization}) written to ${opts.out}\n`);
  } finally {
    if (temp) fs.rmSync(temp, {recursive: true, force: true});
  }
}

if (require.main === module) {
  main().catch((e) => {
    process.stderr.write(`ort_dump: ${e.message}\n`);
    process.exit(1);
  });
}

module.exports = {TYPES, readNpy, readNpz, encodeNpy};
