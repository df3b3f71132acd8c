// Swagger UI for the OpenAPI document. A file rather than an inline <script> (what FastAPI's
// default page has), so the page runs under a Content-Security-Policy without 'unsafe-inline'.
"use strict";

window.ui = SwaggerUIBundle({
  url: "openapi.json", // relative to /v1/docs: /v1/openapi.json
  dom_id: "#swagger-ui",
  layout: "BaseLayout",
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
  deepLinking: true,
  showExtensions: true,
  showCommonExtensions: true,
  // The default validator badge is an image from validator.swagger.io: nothing leaves the page.
  validatorUrl: null,
});
