// The one module the page imports for vector tiles (api/static/js/map/vtiles.js): the
// Mapbox Vector Tile decoder and the protobuf reader it runs on, bundled by scripts/web.sh.
export { VectorTile } from '@mapbox/vector-tile';
export { PbfReader } from 'pbf';
